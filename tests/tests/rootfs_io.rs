//! A container's writable layer under a real containerd (Debian's 1.6), driven with
//! `ctr`: with `[rootfs] writable_layer = "guest-disk"` (the default) the container's
//! root is an overlay in the guest whose writes land on the pod's scratch disk, never
//! in containerd's snapshot on the host; a full scratch disk is ENOSPC in the
//! container and bounded on the host; the disk is gone after delete, after a killed
//! shim and after a killed VM. With `"host"` the writes land in the snapshot as before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_tests::containerd::{Containerd, IMAGE, RUNTIME};
use hull_tests::{output_text, processes_mentioning, wait_for};

macro_rules! need_containerd {
    ($name:expr) => {
        if !hull_tests::containerd::require_containerd($name) {
            return;
        }
    };
}

/// A hull config for this test: its own scratch dir (inside the test's state dir, so
/// nothing is shared with other tests), `layer` and `size_mib`.
fn config(c: &Containerd, layer: &str, size_mib: u64) -> (PathBuf, PathBuf) {
    let scratch = c.state.path().join("scratch");
    let cfg = c
        .state
        .path()
        .join(format!("rootfs-{layer}-{size_mib}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[rootfs]\nwritable_layer = \"{layer}\"\nscratch_size_mib = {size_mib}\nscratch_dir = \"{}\"\n",
            scratch.display()
        ),
    )
    .expect("config");
    (cfg, scratch)
}

fn run_detached(c: &Containerd, cfg: &Path, id: &str) {
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        cfg.to_str().expect("utf8"),
        IMAGE,
        id,
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
}

fn exec(c: &Containerd, id: &str, exec_id: &str, script: &str) -> std::process::Output {
    c.ctr(&["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script])
}

/// The scratch disks in `dir` (not the templates they are copied from).
fn disks(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    name.ends_with(".img") && !name.starts_with("template-")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Files named `name` anywhere in containerd's snapshots.
fn in_snapshots(c: &Containerd, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![c.dir().join("root")];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(p),
                _ if e.file_name() == name => found.push(p),
                _ => {}
            }
        }
    }
    found
}

fn wait_no_disks(scratch: &Path, after: &str) {
    wait_for(
        &format!("the scratch disk to be removed {after}"),
        Duration::from_secs(30),
        || disks(scratch).is_empty().then_some(()),
    );
}

#[test]
fn writes_land_on_the_pods_scratch_disk_not_in_the_snapshot() {
    need_containerd!("writes_land_on_the_pods_scratch_disk_not_in_the_snapshot");
    let c = Containerd::start();
    let (cfg, scratch) = config(&c, "guest-disk", 1024);
    run_detached(&c, &cfg, "gd1");
    let sandbox = c.sandbox_of("gd1");
    let disk = scratch.join(format!("{sandbox}.img"));
    assert_eq!(
        disks(&scratch),
        std::slice::from_ref(&disk),
        "one disk, named after the sandbox"
    );
    assert_eq!(
        std::fs::metadata(&disk).expect("disk").len(),
        1024 << 20,
        "the disk has the configured size"
    );

    // The root is an overlay; the image is there below it; a write reads back, also
    // over an image file (copy-up), and a deleted image file stays deleted.
    let out = exec(
        &c,
        "gd1",
        "w1",
        "grep ' / ' /proc/mounts | cut -d' ' -f3; echo data > /written-by-gd1; \
         echo more >> /etc/hostname-copy; cp /etc/passwd /etc/passwd.bak; \
         rm /etc/passwd.bak; cat /written-by-gd1; test -x /bin/busybox && echo image",
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "overlay\ndata\nimage\n",
        "{}",
        output_text(&out)
    );
    // The guest's scratch disk holds the layer; containerd's snapshot does not.
    assert!(
        in_snapshots(&c, "written-by-gd1").is_empty(),
        "the write reached the host snapshot: {:?}",
        in_snapshots(&c, "written-by-gd1")
    );
    let out = exec(&c, "gd1", "w2", "ls /written-by-gd1 && df -k / | tail -1");
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    c.kill_and_remove("gd1");
    wait_no_disks(&scratch, "after delete");
    c.assert_nothing_left();
}

#[test]
fn a_full_scratch_disk_is_enospc_in_the_container_and_bounded_on_the_host() {
    need_containerd!("a_full_scratch_disk_is_enospc_in_the_container_and_bounded_on_the_host");
    let c = Containerd::start();
    let (cfg, scratch) = config(&c, "guest-disk", 64);
    run_detached(&c, &cfg, "full1");
    let out = exec(
        &c,
        "full1",
        "fill",
        "dd if=/dev/zero of=/big bs=1M count=100 2>&1; echo status=$?",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("No space left on device") && !text.contains("status=0"),
        "writing 100 MiB to a 64 MiB scratch disk fails with ENOSPC: {}",
        output_text(&out)
    );
    let sandbox = c.sandbox_of("full1");
    let disk = scratch.join(format!("{sandbox}.img"));
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&disk).expect("disk").blocks() * 512
    };
    assert!(
        allocated <= 64 << 20,
        "the host file holds at most the disk's size: {allocated} bytes"
    );
    // The container still works once space is freed.
    let out = exec(
        &c,
        "full1",
        "free",
        "rm /big && echo ok > /small && cat /small",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "{}",
        output_text(&out)
    );
    c.kill_and_remove("full1");
    wait_no_disks(&scratch, "after delete");
    c.assert_nothing_left();
}

#[test]
fn the_scratch_disk_goes_with_a_killed_shim_and_a_killed_vm() {
    need_containerd!("the_scratch_disk_goes_with_a_killed_shim_and_a_killed_vm");
    let c = Containerd::start();
    let (cfg, scratch) = config(&c, "guest-disk", 1024);

    run_detached(&c, &cfg, "ks1");
    assert_eq!(disks(&scratch).len(), 1);
    c.kill_shim("ks1");
    wait_no_disks(&scratch, "after the shim was killed");
    assert!(c.ctr(&["containers", "rm", "ks1"]).status.success());

    run_detached(&c, &cfg, "kv1");
    assert_eq!(disks(&scratch).len(), 1);
    let vm = processes_mentioning(&c.state.path().to_string_lossy())
        .into_iter()
        .find(|(_, cmd)| cmd.contains("qemu-system") || cmd.contains("hull-vmm"))
        .expect("the task's VM");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the VM");
    wait_for("the task to stop", Duration::from_secs(30), || {
        (c.task_status("kv1").as_deref() == Some("STOPPED")).then_some(())
    });
    assert!(c.ctr(&["task", "delete", "kv1"]).status.success());
    assert!(c.ctr(&["containers", "rm", "kv1"]).status.success());
    wait_no_disks(&scratch, "after the VM was killed");
    c.assert_nothing_left();
}

#[test]
fn host_mode_writes_into_containerds_snapshot_and_makes_no_disk() {
    need_containerd!("host_mode_writes_into_containerds_snapshot_and_makes_no_disk");
    let c = Containerd::start();
    let (cfg, scratch) = config(&c, "host", 1024);
    run_detached(&c, &cfg, "hm1");
    assert!(disks(&scratch).is_empty(), "no scratch disk in host mode");
    let out = exec(&c, "hm1", "w1", "echo data > /written-by-hm1");
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(
        in_snapshots(&c, "written-by-hm1").len(),
        1,
        "the write is in the container's snapshot on the host"
    );
    c.kill_and_remove("hm1");
    c.assert_nothing_left();
}
