//! Fuzz target: `husk_microvm::api::fuzz_request` (the bytes a client sends to the control
//! API socket: HTTP head, Content-Length body, routing and the attach body's JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    husk_microvm::api::fuzz_request(data);
});
