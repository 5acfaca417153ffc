//! hull-vmm start-up and exit, beside QEMU microvm running the same freestanding PVH
//! guest. One run prints min/median/max over repetitions; no assertions.
//!
//!     cargo bench -p hull-vmm --bench boot            # 20 repetitions each
//!     HULL_BENCH_REPS=50 cargo bench -p hull-vmm --bench boot
//!
//! Measured per run, from the parent's spawn() of the process:
//! - first exit: the first byte of guest serial output arrives on the pipe (the guest's
//!   first `out` is its first I/O exit; hull-vmm passes the console on a line at a time,
//!   so for it this is the end of the guest's first line, a few exits later),
//! - power-off: the process has exited after the guest's reset request (triple fault;
//!   QEMU runs with -no-reboot so it exits, hull-vmm treats it as the end of the VM),
//! - CPU: user + system time of the process (wait4 rusage),
//! - RSS: peak resident set of the process (ru_maxrss).

#[path = "../tests/common/guests.rs"]
mod guests;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    first_exit: Duration,
    exited: Duration,
    cpu: Duration,
    maxrss_kib: u64,
    output: String,
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

fn measure(cmd: &mut Command) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut first = [0u8; 1];
    let n = out.read(&mut first).map_err(|e| e.to_string())?;
    let first_exit = start.elapsed();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child's pid with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let exited = start.elapsed();
    if pid < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    if n == 0 {
        return Err("no guest output".into());
    }
    let mut output = String::from_utf8_lossy(&first[..n]).into_owned();
    output.push_str(&String::from_utf8_lossy(&rest));
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("exit status {status:#x}, output {output:?}"));
    }
    Ok(Sample {
        first_exit,
        exited,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        maxrss_kib: usage.ru_maxrss as u64,
        output,
    })
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

struct Summary {
    name: String,
    first: (f64, f64, f64),
    exited: (f64, f64, f64),
    cpu: (f64, f64, f64),
    rss: (f64, f64, f64),
}

fn run_many(name: &str, reps: usize, make: &dyn Fn() -> Command) -> Result<Summary, String> {
    let mut samples = Vec::new();
    for _ in 0..reps {
        let s = measure(&mut make())?;
        if !s.output.contains("action: triple fault") {
            return Err(format!("unexpected guest output {:?}", s.output));
        }
        samples.push(s);
    }
    let ms = |f: fn(&Sample) -> Duration| {
        stats(samples.iter().map(|s| f(s).as_secs_f64() * 1e3).collect())
    };
    Ok(Summary {
        name: name.into(),
        first: ms(|s| s.first_exit),
        exited: ms(|s| s.exited),
        cpu: ms(|s| s.cpu),
        rss: stats(samples.iter().map(|s| s.maxrss_kib as f64).collect()),
    })
}

fn print(s: &Summary) {
    let row = |what: &str, (a, b, c): (f64, f64, f64), unit: &str| {
        println!("  {what:<28} {a:>9.2} {b:>9.2} {c:>9.2} {unit}");
    };
    println!("{} (min / median / max)", s.name);
    row("spawn -> first guest exit", s.first, "ms");
    row("spawn -> power-off (exited)", s.exited, "ms");
    row("CPU time (user+sys)", s.cpu, "ms");
    row("peak RSS", s.rss, "KiB");
}

fn qemu(accel: &str, guest: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        accel,
        "-m",
        "64M",
        "-smp",
        "1",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .args(["-serial", "stdio", "-append", "act=t", "-kernel"])
    .arg(guest);
    c
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let reps: usize = if bench_mode {
        std::env::var("HULL_BENCH_REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
    } else {
        1 // `cargo test --benches`: a smoke run
    };
    let host = hull_vmm::host_support();
    println!("host: {}", host.summary());
    if !host.can_run_vms() {
        println!("SKIP: hull-vmm cannot run here");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hull-bench-{}", std::process::id()));
    let g = guests::build_guests(&dir).expect("building the guests");
    let vmm = env!("CARGO_BIN_EXE_hull-vmm");
    println!(
        "guest: {} (PVH ELF, 64 MiB, 1 vCPU, cmdline act=t), {reps} repetitions\n",
        g.pvh_elf.display()
    );

    let hull = run_many("hull-vmm", reps, &|| {
        let mut c = Command::new(vmm);
        c.args([
            "--mem-mib",
            "64",
            "--cmdline",
            "act=t",
            "--console",
            "/dev/stdout",
            "--kernel",
        ])
        .arg(&g.pvh_elf);
        c
    });
    let hull = match hull {
        Ok(s) => {
            print(&s);
            s
        }
        Err(e) => {
            println!("hull-vmm failed: {e}");
            return;
        }
    };
    let mut peers = Vec::new();
    for accel in ["kvm", "tcg"] {
        match run_many(
            &format!("qemu-system-x86_64 -M microvm -accel {accel}"),
            reps,
            &|| qemu(accel, &g.pvh_elf),
        ) {
            Ok(s) => {
                print(&s);
                peers.push(s);
            }
            Err(e) => println!("qemu -accel {accel}: did not run here ({e})"),
        }
    }
    println!("\nratios, median QEMU / median hull-vmm (higher = hull-vmm better):");
    for p in &peers {
        println!(
            "  {:<40} first exit {:>5.1}x  power-off {:>5.1}x  CPU {:>5.1}x  RSS {:>5.1}x",
            p.name,
            p.first.1 / hull.first.1,
            p.exited.1 / hull.exited.1,
            p.cpu.1 / hull.cpu.1.max(0.001),
            p.rss.1 / hull.rss.1,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
