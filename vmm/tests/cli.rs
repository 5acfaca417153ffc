//! The `hull-vmm` binary boots the freestanding guests in every entry mode and exits
//! with the documented status. Each test checks what the guest printed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{guests, kvm_available, scratch};

/// A hang guard, not a timing assertion.
const HANG_LIMIT: Duration = Duration::from_secs(60);

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
}

fn wait(mut child: Child) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if start.elapsed() > HANG_LIMIT => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "hull-vmm hung; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

struct Run {
    code: i32,
    console: String,
    stderr: String,
}

/// Starts hull-vmm with `args` and its console in `dir/console.txt`.
fn spawn_vmm(dir: &Path, args: &[&str]) -> Child {
    vmm()
        .args(args)
        .arg("--console")
        .arg(dir.join("console.txt"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hull-vmm")
}

fn run_vmm(dir: &Path, args: &[&str]) -> Run {
    let console = dir.join("console.txt");
    let out = wait(spawn_vmm(dir, args));
    let run = Run {
        code: out.status.code().expect("exited, not signalled"),
        console: std::fs::read_to_string(&console).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "exit {}\nconsole:\n{}\nstderr:\n{}",
        run.code, run.console, run.stderr
    );
    run
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn real_mode_guest_prints_and_uses_the_debug_exit_port() {
    if !kvm_available("real_mode_guest") {
        return;
    }
    let g = guests();
    let dir = scratch("real16");
    let r = run_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.real16_exit),
            "--kernel-format",
            "raw16",
            "--mem-mib",
            "16",
            "--debug-exit",
        ],
    );
    assert_eq!(r.console, "hull real-mode guest\n");
    assert_eq!(r.code, (0x10 << 1) | 1);
}

#[test]
fn real_mode_guest_resets_through_the_i8042() {
    if !kvm_available("real_mode_reset") {
        return;
    }
    let g = guests();
    let dir = scratch("real16-reset");
    let r = run_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.real16_reset),
            "--kernel-format",
            "raw16",
            "--mem-mib",
            "16",
        ],
    );
    assert_eq!(r.console, "hull real-mode guest\n");
    assert_eq!(r.code, 0);
    assert!(r.stderr.contains("i8042"), "{}", r.stderr);
}

fn check_64bit_output(console: &str, tag: &str, cmdline: &str, memmap: u32, initrd: bool) {
    assert!(console.contains(tag), "missing {tag:?} in {console:?}");
    assert!(
        console.contains(&format!("cmdline={cmdline}\n")),
        "{console:?}"
    );
    assert!(
        console.contains(&format!("memmap={memmap}\n")),
        "{console:?}"
    );
    if initrd {
        assert!(console.contains("initrd=INITRD-OK 012345\n"), "{console:?}");
    } else {
        assert!(!console.contains("initrd="), "{console:?}");
    }
}

#[test]
fn pvh_elf_guest_gets_cmdline_initrd_and_memmap() {
    if !kvm_available("pvh_elf") {
        return;
    }
    let g = guests();
    let dir = scratch("pvh");
    let cmdline = "console=ttyS0 act=xA hull.test=1";
    let r = run_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.pvh_elf),
            "--mem-mib",
            "64",
            "--debug-exit",
            "--initrd",
            p(&g.initrd),
            "--cmdline",
            cmdline,
        ],
    );
    // 'P' is printed in 32-bit mode after the start_info magic check.
    assert!(
        r.console.starts_with("P\nhull PVH guest in long mode\n"),
        "{:?}",
        r.console
    );
    check_64bit_output(&r.console, "PVH guest", cmdline, 2, true);
    assert!(r.console.ends_with("action: debug exit\n"));
    assert_eq!(r.code, (0x41 << 1) | 1);
}

#[test]
fn pvh_guest_above_the_mmio_gap_sees_three_ram_ranges() {
    if !kvm_available("pvh_high_mem") {
        return;
    }
    let g = guests();
    let dir = scratch("pvh-high");
    // 3.5 GiB: RAM continues above 4 GiB (memory is reserved lazily: MAP_NORESERVE).
    let r = run_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.pvh_elf),
            "--mem-mib",
            "3584",
            "--cmdline",
            "act=r",
        ],
    );
    check_64bit_output(&r.console, "PVH guest", "act=r", 3, false);
    assert_eq!(r.code, 0);
}

#[test]
fn pvh_guest_i8042_reset_exits_zero() {
    if !kvm_available("pvh_reset") {
        return;
    }
    let g = guests();
    let dir = scratch("pvh-reset");
    let r = run_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.pvh_elf),
            "--mem-mib",
            "32",
            "--cmdline",
            "act=r",
            "--vcpus",
            "2",
        ],
    );
    assert!(
        r.console.ends_with("action: i8042 reset\n"),
        "{:?}",
        r.console
    );
    assert_eq!(r.code, 0);
    assert!(r.stderr.contains("guest reset (i8042 0xFE)"));
}

#[test]
fn triple_fault_is_a_reset_request() {
    if !kvm_available("triple_fault") {
        return;
    }
    let g = guests();
    let dir = scratch("triple");
    let r = run_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.pvh_elf),
            "--mem-mib",
            "32",
            "--cmdline",
            "act=t",
        ],
    );
    assert!(
        r.console.ends_with("action: triple fault\n"),
        "{:?}",
        r.console
    );
    assert_eq!(r.code, 0);
    assert!(r.stderr.contains("triple fault"), "{}", r.stderr);
}

#[test]
fn bzimage_guest_uses_the_64bit_boot_protocol() {
    if !kvm_available("bzimage") {
        return;
    }
    let g = guests();
    let dir = scratch("bzimage");
    let cmdline = "act=x2 root=/dev/vda";
    let r = run_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.bzimage),
            "--mem-mib",
            "64",
            "--debug-exit",
            "--initrd",
            p(&g.initrd),
            "--cmdline",
            cmdline,
        ],
    );
    // 'B' is printed after the zero page's "HdrS" check.
    assert!(
        r.console
            .starts_with("B\nhull 64-bit boot protocol guest\n"),
        "{:?}",
        r.console
    );
    check_64bit_output(&r.console, "64-bit boot protocol", cmdline, 2, true);
    assert_eq!(r.code, (b'2' as i32) << 1 | 1);
}

#[test]
fn elf_without_pvh_note_uses_the_64bit_boot_protocol() {
    if !kvm_available("elf64") {
        return;
    }
    let g = guests();
    let dir = scratch("elf64");
    let r = run_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.elf64),
            "--mem-mib",
            "32",
            "--cmdline",
            "act=r",
        ],
    );
    assert!(
        r.console
            .starts_with("B\nhull 64-bit boot protocol guest\n"),
        "{:?}",
        r.console
    );
    check_64bit_output(&r.console, "64-bit boot protocol", "act=r", 2, false);
    assert_eq!(r.code, 0);
}

#[test]
fn json_config_file() {
    if !kvm_available("json_config") {
        return;
    }
    let g = guests();
    let dir = scratch("json");
    let json = serde_json::json!({
        "kernel": g.pvh_elf,
        "cmdline": "act=xj",
        "vcpus": 2,
        "mem_mib": 48,
        "shared_memory": false,
        "devices": {"debug_exit": true}
    });
    let cfg: PathBuf = dir.join("vm.json");
    std::fs::write(&cfg, json.to_string()).unwrap();
    let r = run_vmm(&dir, &["--config", p(&cfg)]);
    check_64bit_output(&r.console, "PVH guest", "act=xj", 2, false);
    assert_eq!(r.code, (b'j' as i32) << 1 | 1);
}

#[test]
fn serial_input_reaches_the_guest() {
    if !kvm_available("serial_input") {
        return;
    }
    let g = guests();
    let dir = scratch("serial-in");
    let fifo = dir.join("input.fifo");
    let c = std::ffi::CString::new(p(&fifo)).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let child = spawn_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.bzimage),
            "--mem-mib",
            "32",
            "--debug-exit",
            "--cmdline",
            "act=e",
            "--console-input",
            p(&fifo),
        ],
    );
    // Opening the FIFO for writing blocks until hull-vmm has opened it for reading.
    std::fs::write(&fifo, b"hello from the host\n").unwrap();
    let out = wait(child);
    let text = std::fs::read_to_string(dir.join("console.txt")).unwrap();
    println!("{text}");
    assert!(
        text.ends_with("action: echo\nhello from the host\n"),
        "{text:?}"
    );
    assert_eq!(out.status.code(), Some((0x45 << 1) | 1));
}

#[test]
fn sigterm_stops_a_vm_whose_vcpus_are_blocked_in_kvm() {
    if !kvm_available("sigterm") {
        return;
    }
    let g = guests();
    let dir = scratch("sigterm");
    let console = dir.join("console.txt");
    // vCPU 0 halts with interrupts off; vCPU 1 waits for INIT/SIPI: both sit in KVM_RUN.
    let child = spawn_vmm(
        &dir,
        &[
            "--kernel",
            p(&g.pvh_elf),
            "--mem-mib",
            "32",
            "--vcpus",
            "2",
            "--cmdline",
            "act=h",
        ],
    );
    let start = Instant::now();
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("action: halt")
    {
        assert!(start.elapsed() < HANG_LIMIT, "guest never reached its halt");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = wait(child);
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped by the host"));
}

#[test]
fn bad_configurations_exit_2() {
    let dir = scratch("badcfg");
    let g = guests();
    let missing = run_vmm(&dir, &["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("/nonexistent/vmlinux"));
    let zero = run_vmm(&dir, &["--kernel", p(&g.pvh_elf), "--vcpus", "0"]);
    assert_eq!(zero.code, 2);
    let cfg = dir.join("bad.json");
    std::fs::write(&cfg, r#"{"kernel": "k", "memory": 5}"#).unwrap();
    let unknown = run_vmm(&dir, &["--config", p(&cfg)]);
    assert_eq!(unknown.code, 2);
    assert!(unknown.stderr.contains("memory"), "{}", unknown.stderr);
    // Not a kernel at all (the initrd text file).
    let junk = run_vmm(&dir, &["--kernel", p(&g.initrd)]);
    assert_eq!(junk.code, 2);
    assert!(junk.stderr.contains("neither an ELF nor a bzImage"));
    if kvm_available("bzimage_cmdline_limit") {
        // The bzImage guest's header says cmdline_size = 255.
        let long = format!("act=r {}", "x".repeat(300));
        let r = run_vmm(&dir, &["--kernel", p(&g.bzimage), "--cmdline", &long]);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("at most 255"), "{}", r.stderr);
    }
}

#[test]
fn check_reports_the_host() {
    let out = vmm().arg("--check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.contains("/dev/kvm"), "{text}");
    let h = hull_vmm::host_support();
    assert_eq!(out.status.code(), Some(if h.can_run_vms() { 0 } else { 4 }));
}

/// Sends one request on the API socket and returns the answer line.
fn api(socket: &Path, request: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("API socket");
    stream
        .set_read_timeout(Some(HANG_LIMIT))
        .expect("read timeout");
    writeln!(stream, "{request}").expect("request");
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .expect("answer");
    answer.trim_end().to_string()
}

/// Counts `c=<hex>` lines (see the guests' README, `act=c`).
fn count_lines(text: &str) -> Vec<u32> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("c="))
        .filter_map(|hex| u32::from_str_radix(hex, 16).ok())
        .collect()
}

/// `--api-socket` takes a snapshot of a running VM; `--restore DIR` and `--restore-fds`
/// (files the caller opened) start new processes that go on from it.
#[test]
fn the_api_socket_snapshots_and_restore_flags_go_on_from_it() {
    if !kvm_available("cli_snapshot") {
        return;
    }
    let g = guests();
    let dir = scratch("cli-snapshot");
    let cfg = dir.join("vm.json");
    let json = serde_json::json!({
        "kernel": g.pvh_elf,
        "cmdline": "act=c",
        "mem_mib": 32,
        "devices": {"debug_exit": true}
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let socket = dir.join("api.sock");
    let console = dir.join("console.txt");
    let child = spawn_vmm(&dir, &["--config", p(&cfg), "--api-socket", p(&socket)]);
    let start = Instant::now();
    while count_lines(&std::fs::read_to_string(&console).unwrap_or_default()).len() < 3 {
        assert!(start.elapsed() < HANG_LIMIT, "the guest never counted");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        api(&socket, "dance"),
        "error: unknown request \"dance\" (pause, resume, snapshot <dir>)"
    );
    let snap = dir.join("snap");
    assert_eq!(api(&socket, &format!("snapshot {}", p(&snap))), "ok");
    let before = std::fs::read_to_string(&console).unwrap();
    let again = api(&socket, &format!("snapshot {}", p(&snap)));
    assert!(
        again.starts_with("error: ") && again.contains("already exists"),
        "{again}"
    );
    assert_eq!(api(&socket, "resume"), "ok");
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(wait(child).status.code(), Some(10));
    assert!(!socket.exists(), "the API socket is removed with the VM");
    let n = count_lines(&before).len() as u32;

    let by_fds = |state: &std::fs::File, memory: &std::fs::File| {
        use std::os::fd::AsRawFd;
        format!("{},{}", state.as_raw_fd(), memory.as_raw_fd())
    };
    let state = std::fs::File::open(snap.join("state.json")).unwrap();
    let memory = std::fs::File::open(snap.join("memory")).unwrap();
    let fds = by_fds(&state, &memory);
    for restore in [
        vec!["--restore", p(&snap)],
        vec!["--restore-fds", fds.as_str()],
    ] {
        let out_dir = scratch("cli-restored");
        let mut args = vec!["--config", p(&cfg)];
        args.extend(restore.iter().copied());
        let mut cmd = vmm();
        cmd.args(&args)
            .arg("--console")
            .arg(out_dir.join("console.txt"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // std::process::Command keeps only 0-2 open: the fds go through pre_exec.
        let inherit = [
            std::os::fd::AsRawFd::as_raw_fd(&state),
            std::os::fd::AsRawFd::as_raw_fd(&memory),
        ];
        // SAFETY: fcntl on fds this process holds open, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                for fd in inherit {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn hull-vmm");
        let restored = out_dir.join("console.txt");
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&restored).unwrap_or_default();
            let after = count_lines(&format!("{before}{text}"));
            if after.len() as u32 >= n + 3 {
                let expected: Vec<u32> = (1..=after.len() as u32).collect();
                assert_eq!(after, expected, "{restore:?}: {before}{text}");
                assert!(!text.contains("PVH guest"), "booted again: {text}");
                break;
            }
            assert!(
                start.elapsed() < HANG_LIMIT,
                "{restore:?}: no counts: {text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        assert_eq!(wait(child).status.code(), Some(10));
    }

    // A snapshot that is not one exits 2 and says why.
    let bad = run_vmm(&dir, &["--config", p(&cfg), "--restore", p(&dir)]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("state.json"), "{}", bad.stderr);
}
