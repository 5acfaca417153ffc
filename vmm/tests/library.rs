//! The library API the runtime links: build, run, exit reasons, stop/pause/resume,
//! memory backings.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{guests, kvm_available, scratch};
use hull_vmm::{Error, ExitReason, ResetCause, VmConfig, Vmm};

const HANG_LIMIT: Duration = Duration::from_secs(60);

fn pvh_config(dir: &Path, cmdline: &str) -> VmConfig {
    let mut cfg = VmConfig::new(&guests().pvh_elf);
    cfg.cmdline = cmdline.into();
    cfg.mem_mib = 32;
    cfg.console = Some(dir.join("console.txt"));
    cfg.devices.debug_exit = true;
    cfg
}

fn console(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("console.txt")).unwrap_or_default()
}

/// Runs the VM on a thread; returns its handle and a receiver for the result.
fn start(
    cfg: VmConfig,
) -> (
    hull_vmm::VmmHandle,
    mpsc::Receiver<hull_vmm::Result<ExitReason>>,
) {
    let vmm = Vmm::build(cfg).expect("build");
    let handle = vmm.handle();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vmm.run());
    });
    (handle, rx)
}

fn wait_for_console(dir: &Path, needle: &str) {
    let start = Instant::now();
    while !console(dir).contains(needle) {
        assert!(
            start.elapsed() < HANG_LIMIT,
            "never saw {needle:?}: {:?}",
            console(dir)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn run_returns_the_debug_exit_value() {
    if !kvm_available("library_debug_exit") {
        return;
    }
    let dir = scratch("lib-exit");
    let vmm = Vmm::build(pvh_config(&dir, "act=xZ")).unwrap();
    let reason = vmm.run().unwrap();
    assert_eq!(reason, ExitReason::DebugExit(b'Z'));
    assert_eq!(reason.exit_code(), (i32::from(b'Z') << 1) | 1);
    assert!(console(&dir).contains("cmdline=act=xZ\n"));
}

#[test]
fn reset_requests_are_clean_exits() {
    if !kvm_available("library_reset") {
        return;
    }
    for (act, cause) in [
        ("act=r", ResetCause::I8042),
        ("act=t", ResetCause::TripleFault),
    ] {
        let dir = scratch("lib-reset");
        let reason = Vmm::build(pvh_config(&dir, act)).unwrap().run().unwrap();
        assert_eq!(reason, ExitReason::Reset(cause));
        assert!(reason.is_clean_guest_exit());
        assert_eq!(reason.exit_code(), 0);
        assert!(console(&dir).contains("action:"), "{}", console(&dir));
    }
}

#[test]
fn pause_freezes_the_guest_and_resume_continues_it() {
    if !kvm_available("library_pause") {
        return;
    }
    let dir = scratch("lib-pause");
    let mut cfg = pvh_config(&dir, "act=p");
    cfg.vcpus = 2;
    let (handle, rx) = start(cfg);
    wait_for_console(&dir, "action: spin\n.");

    handle.pause().unwrap();
    let frozen = console(&dir).len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        console(&dir).len(),
        frozen,
        "the guest printed while paused"
    );

    handle.resume().unwrap();
    let start = Instant::now();
    while console(&dir).len() == frozen {
        assert!(
            start.elapsed() < HANG_LIMIT,
            "the guest did not continue after resume"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.stop();
    let reason = rx.recv_timeout(HANG_LIMIT).unwrap().unwrap();
    assert_eq!(reason, ExitReason::Stopped);
    assert_eq!(reason.exit_code(), 10);
}

#[test]
fn stop_while_paused() {
    if !kvm_available("library_stop_paused") {
        return;
    }
    let dir = scratch("lib-stop-paused");
    let (handle, rx) = start(pvh_config(&dir, "act=h"));
    wait_for_console(&dir, "action: halt");
    handle.pause().unwrap();
    handle.stop();
    assert_eq!(
        rx.recv_timeout(HANG_LIMIT).unwrap().unwrap(),
        ExitReason::Stopped
    );
    // The VM is gone: further requests fail instead of hanging.
    assert!(handle.pause().is_err());
}

#[test]
fn private_memory_backing_boots_too() {
    if !kvm_available("library_private_memory") {
        return;
    }
    let dir = scratch("lib-private");
    let mut cfg = pvh_config(&dir, "act=x1");
    cfg.shared_memory = false;
    assert_eq!(
        Vmm::build(cfg).unwrap().run().unwrap(),
        ExitReason::DebugExit(b'1')
    );
}

fn free_hugepages_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field("HugePages_Free:") * field("Hugepagesize:") * 1024
}

#[test]
fn hugepages_boot_or_fail_clearly() {
    if !kvm_available("library_hugepages") {
        return;
    }
    let dir = scratch("lib-huge");
    let mut cfg = pvh_config(&dir, "act=x2");
    cfg.hugepages = true;
    if free_hugepages_bytes() >= cfg.mem_bytes() {
        assert_eq!(
            Vmm::build(cfg).unwrap().run().unwrap(),
            ExitReason::DebugExit(b'2')
        );
    } else {
        println!("no free huge pages here: checking the error instead of booting");
        match Vmm::build(cfg) {
            Err(Error::Memory(msg)) => assert!(msg.contains("huge pages"), "{msg}"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("hugepage-backed memory without free huge pages"),
        }
    }
}

#[test]
fn build_errors_are_typed() {
    let mut cfg = VmConfig::new("/nonexistent");
    assert!(matches!(Vmm::build(cfg.clone()), Err(Error::File { .. })));
    cfg.vcpus = 0;
    let err = Vmm::build(cfg).err().unwrap();
    assert!(matches!(err, Error::Config(_)));
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn two_vcpus_run_and_stop() {
    if !kvm_available("library_two_vcpus") {
        return;
    }
    let dir = scratch("lib-smp");
    let mut cfg = pvh_config(&dir, "act=h");
    cfg.vcpus = 2;
    let (handle, rx) = start(cfg);
    wait_for_console(&dir, "action: halt");
    handle.stop();
    assert_eq!(
        rx.recv_timeout(HANG_LIMIT).unwrap().unwrap(),
        ExitReason::Stopped
    );
}
