//! Fuzz target: `husk_microvm::devices::virtio::fuzz_api::balloon_reports` (guest memory fully
//! controlled by the input).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    husk_microvm::devices::virtio::fuzz_api::balloon_reports(data);
});
