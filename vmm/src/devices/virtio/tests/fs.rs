//! The vhost-user-fs frontend against a real virtiofsd: negotiation, memory table and
//! rings handed over, and one FUSE_INIT request answered by virtiofsd through the queue.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;

use super::driver::{Driver, DATA, MEM_SIZE};
use crate::devices::virtio::fs::Fs;
use crate::vstate::memory::{create_guest_memory, MemoryBacking};

struct Virtiofsd(Child);

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where `scripts/setup` installs virtiofsd (hull's helper dir), else PATH.
fn virtiofsd_binary() -> Option<std::path::PathBuf> {
    let installed = Path::new("/usr/local/libexec/hull/bin/virtiofsd");
    if installed.exists() {
        return Some(installed.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("virtiofsd"))
            .find(|p| p.exists())
    })
}

fn virtiofsd(dir: &Path) -> Option<Virtiofsd> {
    let binary = virtiofsd_binary()?;
    let share = dir.join("share");
    std::fs::create_dir_all(&share).ok()?;
    std::fs::write(share.join("hello.txt"), b"hi").ok()?;
    let sock = dir.join("fs.sock");
    let child = Command::new(binary)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&share)
        .args(["--sandbox", "none", "--cache", "never"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let guard = Virtiofsd(child);
    let start = Instant::now();
    while !sock.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(guard)
}

#[test]
fn virtiofsd_answers_fuse_init_through_the_queues() {
    // Removed on every way out (a failed assertion included), after virtiofsd stops.
    let tmp = tempfile::Builder::new()
        .prefix("hull-fs-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path();
    let Some(_daemon) = virtiofsd(dir) else {
        let why = "no virtiofsd in /usr/local/libexec/hull/bin (scripts/setup) or PATH";
        assert!(
            std::env::var_os("HULL_REQUIRE_E2E").is_none(),
            "virtiofsd_answers_fuse_init_through_the_queues cannot run: {why}"
        );
        eprintln!("SKIP virtiofsd_answers_fuse_init_through_the_queues: {why}");
        return;
    };
    let fs = Fs::connect(&dir.join("fs.sock"), "hullshare").unwrap();
    let backing = MemoryBacking {
        shared: true,
        hugepages: false,
    };
    let mem = create_guest_memory(MEM_SIZE, backing).unwrap();
    let mut d = Driver::with_memory(Arc::new(Mutex::new(fs)), mem);
    let mut tag = [0u8; 9];
    use crate::bus::BusDevice;
    d.transport.read(0x100, &mut tag);
    assert_eq!(&tag, b"hullshare");
    let features = d.device_features();
    d.start(features & !(1 << 32), 2);
    // The event loop's part: the vhost-user exchange.
    d.device.lock().unwrap().process_backend();

    // FUSE_INIT: fuse_in_header (40 bytes) + fuse_init_in (64 bytes).
    let mut req = vec![0u8; 104];
    req[0..4].copy_from_slice(&104u32.to_le_bytes());
    req[4..8].copy_from_slice(&26u32.to_le_bytes()); // FUSE_INIT
    req[8..16].copy_from_slice(&7u64.to_le_bytes()); // unique
    req[40..44].copy_from_slice(&7u32.to_le_bytes()); // major
    req[44..48].copy_from_slice(&38u32.to_le_bytes()); // minor
    req[48..52].copy_from_slice(&0x2_0000u32.to_le_bytes()); // max_readahead
    d.write(DATA, &req);
    d.add_chain(1, &[(DATA, 104, false), (DATA + 0x1000, 0x1000, true)]);
    d.set(VIRTIO_MMIO_QUEUE_NOTIFY, 1); // virtiofsd reads the kick eventfd itself
    let start = Instant::now();
    let used = loop {
        let used = d.used(1);
        if !used.is_empty() {
            break used;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "virtiofsd never answered"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = d.read(DATA + 0x1000, 24);
    let len = u32::from_le_bytes(out[0..4].try_into().unwrap());
    let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
    let unique = u64::from_le_bytes(out[8..16].try_into().unwrap());
    let major = u32::from_le_bytes(out[16..20].try_into().unwrap());
    assert_eq!(
        (error, unique, major),
        (0, 7, 7),
        "fuse_out_header + init_out"
    );
    assert_eq!(used[0].1, len);
    // virtiofsd's call eventfd becomes a virtio-mmio interrupt.
    std::thread::sleep(Duration::from_millis(20));
    d.device.lock().unwrap().process_backend();
    assert!(d.take_irq());
}
