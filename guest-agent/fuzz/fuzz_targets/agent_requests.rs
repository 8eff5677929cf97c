//! A hostile shim's request stream, decoded and checked as the agent does before it acts.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_agent::fuzz_api::requests(data));
