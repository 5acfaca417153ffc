#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_vmm::fuzz::connect_line(data));
