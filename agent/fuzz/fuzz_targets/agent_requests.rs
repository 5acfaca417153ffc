#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_agent::fuzz::agent_requests(data));
