//! vsock throughput and round-trip latency between a host client (hybrid socket,
//! `CONNECT 1024`) and an echoing device-model "guest" (`hull_vmm::bench::EchoGuest`,
//! queues in memfd guest memory): hull-vmm's device in-process vs vhost-device-vsock
//! (vhost-user, same guest code, same memory layout). One run; no KVM involved.
//!
//! `cargo bench -p hull-vmm --features bench --bench vsock` (`HULL_BENCH_MIB`, default 32;
//! `HULL_BENCH_RTTS`, default 2000). vhost-device-vsock is looked up on PATH.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hull_vmm::bench::EchoGuest;

struct Result {
    /// None: the stream stalled (no byte for 10 s); the bytes that did arrive.
    mib_s: Option<f64>,
    got: usize,
    rtt_us: f64,
}

fn show(name: &str, r: &Result) {
    match r.mib_s {
        Some(t) => println!("{name:24}{t:8.1} MiB/s  median RTT {:7.1} us", r.rtt_us),
        None => println!(
            "{name:24}  stalled after {} KiB (no data for 10 s)  median RTT {:7.1} us",
            r.got >> 10,
            r.rtt_us
        ),
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn measure(uds: &Path) -> Result {
    let mut s = UnixStream::connect(uds).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(b"CONNECT 1024\n").expect("CONNECT");
    let mut line = String::new();
    BufReader::new(s.try_clone().expect("clone"))
        .take(32)
        .read_line(&mut line)
        .expect("OK line");
    assert!(line.starts_with("OK "), "{line:?}");

    let n = env("HULL_BENCH_RTTS", 2000);
    let msg = [0x5au8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).expect("write");
        s.read_exact(&mut back).expect("echo");
        rtts.push(t.elapsed());
    }
    rtts.sort();

    let total = env("HULL_BENCH_MIB", 32) << 20;
    let mut w = s.try_clone().expect("clone");
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0xa5u8; 64 << 10];
        let mut left = total;
        while left > 0 {
            let k = left.min(chunk.len());
            if w.write_all(&chunk[..k]).is_err() {
                return; // the reader gave up
            }
            left -= k;
        }
    });
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    let mut stalled = false;
    while got < total {
        match s.read(&mut buf) {
            Ok(k) if k > 0 => got += k,
            _ => {
                stalled = true;
                break;
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    Result {
        mib_s: (!stalled).then(|| (total as f64 / (1 << 20) as f64) / secs),
        got,
        rtt_us: rtts[rtts.len() / 2].as_secs_f64() * 1e6,
    }
}

/// Runs `make` (an EchoGuest constructor) on its own thread, measures through `uds`.
fn with_guest(make: impl FnOnce() -> EchoGuest + Send + 'static, uds: &Path) -> Result {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let guest_stop = stop.clone();
    let guest = std::thread::spawn(move || {
        let mut g = make();
        let _ = ready_tx.send(());
        g.run(&guest_stop);
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("guest ready");
    let r = measure(uds);
    stop.store(true, Ordering::Relaxed);
    guest.join().expect("guest");
    r
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("hull-bench-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");

    let uds = dir.join("hull.sock");
    let u = uds.clone();
    let hull = with_guest(move || EchoGuest::hull(&u), &uds);
    show("hull-vmm device model:", &hull);

    // As the QEMU backend runs it (default 64 KiB host buffer per connection), then with
    // hull-vmm's 256 KiB, so buffer size is not what the ratio measures.
    for (label, tx_buffer) in [
        ("vhost-device-vsock:", None),
        ("vhost-device-vsock 256K:", Some(256u32 << 10)),
    ] {
        let run = dir.join(format!("vhost-{}", tx_buffer.unwrap_or(0)));
        std::fs::create_dir_all(&run).expect("dir");
        let vhost_sock = run.join("vhost.sock");
        let vm_sock = run.join("vm.sock");
        let mut vm = format!(
            "guest-cid=3,socket={},uds-path={}",
            vhost_sock.display(),
            vm_sock.display()
        );
        if let Some(b) = tx_buffer {
            vm.push_str(&format!(",tx-buffer-size={b}"));
        }
        let child = Command::new("vhost-device-vsock")
            .arg("--vm")
            .arg(vm)
            .env(
                "RUST_LOG",
                std::env::var("HULL_BENCH_VHOST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(match std::env::var("HULL_BENCH_VHOST_LOG_FILE") {
                Ok(path) => std::fs::File::create(path)
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
                Err(_) => Stdio::null(),
            })
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                println!("vhost-device-vsock not run: {e}");
                break;
            }
        };
        let _guard = Killed(child);
        wait_for(&vhost_sock);
        let vs = vhost_sock.clone();
        let other = with_guest(move || EchoGuest::vhost_user(&vs), &vm_sock);
        show(label, &other);
        let name = label.trim_end_matches(':');
        match (hull.mib_s, other.mib_s) {
            (Some(a), Some(b)) => {
                println!("  ratio hull-vmm / {name}: throughput {:.2}x", a / b)
            }
            _ => println!("  ratio hull-vmm / {name}: throughput n/a (a stream stalled)"),
        }
        println!(
            "  ratio {name} / hull-vmm median RTT: {:.2}x (higher = hull-vmm faster)",
            other.rtt_us / hull.rtt_us
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
