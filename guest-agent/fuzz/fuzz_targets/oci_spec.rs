//! CreateContainer's spec parsing and planning on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_agent::fuzz_api::spec(data));
