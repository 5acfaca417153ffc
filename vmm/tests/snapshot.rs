//! Snapshot and restore with freestanding guests on this host's /dev/kvm: a VM goes on
//! from where its snapshot left it (registers, memory, serial), clones restore from one
//! snapshot side by side, and a bad snapshot is refused by name.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{guests, kvm_available, scratch};
use hull_vmm::{Error, ExitReason, VmConfig, Vmm, VmmHandle};

const HANG_LIMIT: Duration = Duration::from_secs(60);

fn counter_config(console: &Path) -> VmConfig {
    let mut cfg = VmConfig::new(&guests().pvh_elf);
    cfg.cmdline = "act=c".into();
    cfg.mem_mib = 32;
    cfg.console = Some(console.to_path_buf());
    cfg.devices.debug_exit = true;
    cfg
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

type Running = (VmmHandle, mpsc::Receiver<hull_vmm::Result<ExitReason>>);

fn run(vmm: Vmm) -> Running {
    let handle = vmm.handle();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vmm.run());
    });
    (handle, rx)
}

fn stop(vm: Running) {
    vm.0.stop();
    let ended = vm.1.recv_timeout(HANG_LIMIT).expect("the VM ends");
    assert_eq!(ended.expect("a clean stop"), ExitReason::Stopped);
}

/// The counts `c=<hex>` printed on `console`, in order (a partial last line is left).
fn counts(console: &str) -> Vec<u32> {
    console
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("c="))
        .map(|hex| u32::from_str_radix(hex, 16).expect("hex count"))
        .collect()
}

fn wait_for_counts(console: &Path, at_least: usize) {
    let start = Instant::now();
    while counts(&read(console)).len() < at_least {
        assert!(
            start.elapsed() < HANG_LIMIT,
            "fewer than {at_least} counts: {:?}",
            read(console)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Boots the counter, lets it count, snapshots it into `dir/snap` and stops it.
/// Returns the snapshot and the console up to the snapshot.
fn counter_snapshot(dir: &Path, shared_memory: bool) -> (PathBuf, String) {
    let console = dir.join("before.txt");
    let mut cfg = counter_config(&console);
    cfg.shared_memory = shared_memory;
    let vm = run(Vmm::build(cfg).expect("build"));
    wait_for_counts(&console, 5);
    let snap = dir.join("snap");
    vm.0.snapshot(&snap).expect("snapshot");
    // Paused: the console holds everything up to the snapshot.
    let before = read(&console);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(read(&console), before, "a paused VM printed");
    stop(vm);
    (snap, before)
}

/// The console of the snapshot, then a restored VM's: one unbroken count from 1, no
/// second boot.
fn assert_goes_on(before: &str, after: &str) {
    assert!(
        !after.contains("hull PVH guest"),
        "the restored VM booted again: {after:?}"
    );
    let joined = format!("{before}{after}");
    let all = counts(&joined);
    let expected: Vec<u32> = (1..=all.len() as u32).collect();
    assert_eq!(all, expected, "counts across the restore: {joined:?}");
}

#[test]
fn a_restored_vm_goes_on_from_its_snapshot() {
    if !kvm_available("snapshot_goes_on") {
        return;
    }
    for (shared_snapshot, shared_restore) in [(true, true), (true, false), (false, false)] {
        let dir = scratch("snap-goes-on");
        let (snap, before) = counter_snapshot(&dir, shared_snapshot);
        for name in ["state.json", "memory"] {
            let mode = std::fs::metadata(snap.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
            .collect();
        assert!(leftovers.is_empty(), "partial snapshot left");

        let console = dir.join("after.txt");
        let mut cfg = counter_config(&console);
        cfg.shared_memory = shared_restore;
        let before_count = counts(&before).len();
        let vm = run(Vmm::restore(&snap, cfg).expect("restore"));
        let start = Instant::now();
        while counts(&format!("{before}{}", read(&console))).len() < before_count + 5 {
            assert!(start.elapsed() < HANG_LIMIT, "no counts after the restore");
            std::thread::sleep(Duration::from_millis(5));
        }
        stop(vm);
        assert_goes_on(&before, &read(&console));
    }
}

#[test]
fn clones_restore_side_by_side_from_one_snapshot() {
    if !kvm_available("snapshot_clones") {
        return;
    }
    let dir = scratch("snap-clones");
    let (snap, before) = counter_snapshot(&dir, false);
    let consoles: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("clone{i}.txt"))).collect();
    let clones: Vec<Running> = consoles
        .iter()
        .map(|c| run(Vmm::restore(&snap, counter_config(c)).expect("restore")))
        .collect();
    let need = counts(&before).len() + 3;
    let start = Instant::now();
    while consoles
        .iter()
        .any(|c| counts(&format!("{before}{}", read(c))).len() < need)
    {
        assert!(start.elapsed() < HANG_LIMIT, "a clone does not count");
        std::thread::sleep(Duration::from_millis(5));
    }
    for vm in clones {
        stop(vm);
    }
    for c in &consoles {
        assert_goes_on(&before, &read(c));
    }
}

fn refused(snap: &Path, cfg: VmConfig) -> String {
    match Vmm::restore(snap, cfg) {
        Ok(_) => panic!("restored a bad snapshot"),
        Err(e @ Error::Snapshot { .. }) => {
            assert_eq!(e.exit_code(), 2);
            e.to_string()
        }
        Err(e) => panic!("not a snapshot error: {e}"),
    }
}

#[test]
fn bad_snapshots_are_refused_by_name() {
    if !kvm_available("snapshot_refused") {
        return;
    }
    let dir = scratch("snap-bad");
    let (snap, _) = counter_snapshot(&dir, false);
    let cfg = || counter_config(&dir.join("never.txt"));
    let copy = |name: &str| {
        let to = dir.join(name);
        std::fs::create_dir(&to).unwrap();
        for f in ["state.json", "memory"] {
            std::fs::copy(snap.join(f), to.join(f)).unwrap();
            std::fs::set_permissions(to.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        to
    };

    // Not a snapshot at all.
    let msg = refused(&dir.join("missing"), cfg());
    assert!(msg.contains("state.json"), "{msg}");

    // Truncated memory.
    let t = copy("truncated");
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(t.join("memory"))
        .unwrap();
    mem.set_len(1 << 20).unwrap();
    let msg = refused(&t, cfg());
    assert!(msg.contains("truncated"), "{msg}");

    // Corrupt and truncated state.
    let c = copy("corrupt");
    let text = std::fs::read(c.join("state.json")).unwrap();
    std::fs::write(c.join("state.json"), &text[..text.len() / 2]).unwrap();
    let msg = refused(&c, cfg());
    assert!(msg.contains("corrupt or truncated"), "{msg}");

    // Another format version.
    let v = copy("version");
    let text = std::fs::read_to_string(v.join("state.json")).unwrap();
    let text = text.replacen("\"version\":1", "\"version\":99", 1);
    std::fs::write(v.join("state.json"), text).unwrap();
    let msg = refused(&v, cfg());
    assert!(msg.contains("format version 99"), "{msg}");

    // Readable by others.
    let o = copy("open-mode");
    std::fs::set_permissions(o.join("memory"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let msg = refused(&o, cfg());
    assert!(msg.contains("must be 0600"), "{msg}");

    // Another VM shape.
    let mut two = cfg();
    two.vcpus = 2;
    let msg = refused(&snap, two);
    assert!(msg.contains("vcpus"), "{msg}");
    let mut bigger = cfg();
    bigger.mem_mib = 64;
    let msg = refused(&snap, bigger);
    assert!(msg.contains("mem_mib"), "{msg}");

    // A snapshot never overwrites one.
    let vm = run(Vmm::build(cfg()).expect("build"));
    match vm.0.snapshot(&snap) {
        Err(Error::Snapshot { reason, .. }) => assert!(reason.contains("already exists")),
        other => panic!("snapshot over an existing one: {other:?}"),
    }
    stop(vm);
}
