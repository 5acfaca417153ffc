#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_vmm::fuzz::vsock_packets(data));
