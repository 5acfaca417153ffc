//! The pod's host cgroup under a real containerd: the VM's processes (QEMU,
//! virtiofsd, vhost-device-vsock) and the shim are in the container's cgroup, the
//! guest's memory is charged there, the cgroup's limit is VM + overhead, a parent's
//! limit shrinks the VM or refuses a pod that does not fit (by name, nothing left), and
//! the cgroup is gone after delete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_runtime::cgroup::{self, Target};
use hull_runtime::config::DEFAULT_HOST_OVERHEAD_MIB;
use hull_tests::containerd::{Containerd, IMAGE, RUNTIME};
use hull_tests::{output_text, processes_mentioning, wait_for};

const MIB: u64 = 1 << 20;

macro_rules! need_containerd {
    ($name:expr) => {
        if !hull_tests::containerd::require_containerd($name) {
            return;
        }
    };
}

fn v2() -> bool {
    Path::new(cgroup::DEFAULT_ROOT)
        .join("cgroup.controllers")
        .exists()
}

/// The cgroup `rel` in the memory hierarchy.
fn memory_dir(rel: &str) -> PathBuf {
    let root = Path::new(cgroup::DEFAULT_ROOT);
    if v2() {
        root.join(rel)
    } else {
        root.join("memory").join(rel)
    }
}

fn read_bytes(dir: &Path, v1: &str, v2_name: &str) -> Option<u64> {
    let file = dir.join(if v2() { v2_name } else { v1 });
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    cgroup::parse_limit(&text)
}

fn usage(dir: &Path) -> u64 {
    read_bytes(dir, "memory.usage_in_bytes", "memory.current").expect("a usage figure")
}

fn limit(dir: &Path) -> Option<u64> {
    read_bytes(dir, "memory.limit_in_bytes", "memory.max")
}

/// A process's cgroup in the memory hierarchy, from /proc/PID/cgroup.
fn memory_cgroup_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            let hit = if v2() {
                ctrls.is_empty()
            } else {
                ctrls.split(',').any(|c| c == "memory")
            };
            hit.then(|| path.to_string())
        })
        .unwrap_or_default()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn vm_processes_and_guest_memory_are_charged_to_the_containers_cgroup() {
    need_containerd!("vm_processes_and_guest_memory_are_charged_to_the_containers_cgroup");
    let c = Containerd::start();
    let limit_arg = (512 * MIB).to_string();
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &limit_arg,
        IMAGE,
        "m1",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    // ctr's cgroupsPath is /<namespace>/<id>.
    let cg = memory_dir("default/m1");
    assert!(cg.is_dir(), "{} exists while the task runs", cg.display());
    // VM = limit + 128 MiB guest overhead; the cgroup = VM + the host overhead.
    let vm_mib = 512 + 128;
    assert_eq!(
        limit(&cg),
        Some(cgroup::own_limit_bytes(vm_mib, DEFAULT_HOST_OVERHEAD_MIB))
    );

    let vm_procs = processes_mentioning(&c.state.path().to_string_lossy());
    for name in ["qemu-system", "virtiofsd", "vhost-device-vsock"] {
        let (pid, _) = vm_procs
            .iter()
            .find(|(_, cmd)| cmd.contains(name))
            .unwrap_or_else(|| panic!("no {name} among {vm_procs:?}"));
        assert_eq!(
            memory_cgroup_of(*pid),
            "/default/m1",
            "{name} (pid {pid}) is in the pod's cgroup"
        );
    }
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert_eq!(
        memory_cgroup_of(shims[0].0),
        "/default/m1",
        "the shim is in the pod's cgroup"
    );

    // 100 MiB touched in the guest (awk builds a 100 MB string) shows up on the host.
    let before = usage(&cg);
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "hog",
        "m1",
        "awk",
        "BEGIN { s = sprintf(\"%100000000s\", \"\"); print length(s) }",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(stdout(&out).trim(), "100000000", "{}", output_text(&out));
    let after = usage(&cg);
    assert!(
        after >= before + 64 * MIB,
        "the pod's cgroup usage grew by {} MiB (from {} MiB to {} MiB); the guest touched 100 MB",
        (after.saturating_sub(before)) / MIB,
        before / MIB,
        after / MIB
    );
    assert!(after <= cgroup::own_limit_bytes(vm_mib, DEFAULT_HOST_OVERHEAD_MIB));

    c.kill_and_remove("m1");
    assert!(!cg.exists(), "{} removed after delete", cg.display());
    c.assert_nothing_left();
}

/// A parent cgroup with a memory limit, made for the test (the way kubelet makes a
/// pod's), removed at the end.
struct Parent {
    rel: String,
    cg: Option<cgroup::HostCgroup>,
}

impl Parent {
    fn new(limit_mib: u64) -> Parent {
        let rel = format!("hull-e2e-{}", std::process::id());
        let target = Target::detect(Path::new(cgroup::DEFAULT_ROOT), PathBuf::from(&rel))
            .expect("cgroup hierarchy");
        let cg = target.create(Some(limit_mib * MIB)).expect("parent cgroup");
        Parent { rel, cg: Some(cg) }
    }

    fn set_limit(&self, mib: u64) {
        let file = memory_dir(&self.rel).join(if v2() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        });
        std::fs::write(&file, (mib * MIB).to_string()).expect("set the parent's limit");
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        if let Some(mut cg) = self.cg.take() {
            cg.remove();
        }
    }
}

#[test]
fn a_parent_limit_shrinks_the_vm_and_refuses_a_pod_that_does_not_fit() {
    need_containerd!("a_parent_limit_shrinks_the_vm_and_refuses_a_pod_that_does_not_fit");
    let c = Containerd::start();
    let parent = Parent::new(1024);
    let room_mib = 1024 - u64::from(DEFAULT_HOST_OVERHEAD_MIB);

    // A 2 GiB container limit would make a 2176 MiB VM; under 1 GiB it gets 1 GiB - overhead.
    let path = format!("/{}/big", parent.rel);
    let limit_arg = (2048 * MIB).to_string();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--cgroup",
        &path,
        "--memory-limit",
        &limit_arg,
        IMAGE,
        "big",
        "grep",
        "MemTotal",
        "/proc/meminfo",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let kib: u64 = stdout(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MemTotal: {}", output_text(&out)));
    assert!(
        kib * 1024 <= room_mib * MIB && kib * 1024 >= room_mib * MIB / 2,
        "guest MemTotal {kib} kB, expected just under {room_mib} MiB"
    );
    assert!(
        !memory_dir(&format!("{}/big", parent.rel)).exists(),
        "the pod's cgroup is removed"
    );
    assert!(
        memory_dir(&parent.rel).exists(),
        "the parent is not hull's to remove"
    );

    // 200 MiB leaves less than the smallest VM once the overhead is counted.
    parent.set_limit(200);
    let path = format!("/{}/small", parent.rel);
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--cgroup",
        &path,
        IMAGE,
        "small",
        "true",
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not fit in cgroup")
            && err.contains(&parent.rel)
            && err.contains("200 MiB")
            && err.contains("hypervisor.host_overhead_mib"),
        "{}",
        output_text(&out)
    );
    assert!(
        !memory_dir(&format!("{}/small", parent.rel)).exists(),
        "nothing left of the refused pod's cgroup"
    );
    let _ = c.ctr(&["containers", "rm", "small"]);
    c.assert_nothing_left();
    drop(parent);
}

#[test]
fn a_killed_shims_cgroup_is_removed_by_delete() {
    need_containerd!("a_killed_shims_cgroup_is_removed_by_delete");
    let c = Containerd::start();
    let limit_arg = (256 * MIB).to_string();
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &limit_arg,
        IMAGE,
        "k1",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let cg = memory_dir("default/k1");
    assert!(cg.is_dir(), "{}", cg.display());
    c.kill_shim("k1");
    // containerd forgets the task and runs `delete` in the background.
    wait_for(
        "`delete` to remove the pod's cgroup",
        Duration::from_secs(30),
        || (!cg.exists()).then_some(()),
    );
    assert!(c.ctr(&["containers", "rm", "k1"]).status.success());
    c.assert_nothing_left();
}

/// The shim killed the moment the pod's cgroup appears (what the soak's "shim at boot"
/// fault hit): the dirs were recorded in the bundle before they were made, so
/// `delete` removes them all the same.
#[test]
fn a_shim_killed_as_it_makes_the_pod_cgroup_leaves_no_cgroup() {
    need_containerd!("a_shim_killed_as_it_makes_the_pod_cgroup_leaves_no_cgroup");
    let c = Containerd::start();
    let cg = memory_dir("default/e1");
    assert!(
        !cg.exists(),
        "{} is left from an earlier run: remove it",
        cg.display()
    );
    let limit_arg = (256 * MIB).to_string();
    let mut run = std::process::Command::new("timeout")
        .args(["-s", "KILL", "120"])
        .arg(c.ctr_binary())
        .arg("-a")
        .arg(c.socket())
        .args([
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--memory-limit",
            &limit_arg,
            IMAGE,
            "e1",
            "sleep",
            "1000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ctr run");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cg.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pod's cgroup never appeared"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0].0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    let status = run.wait().expect("ctr run ends");
    assert!(!status.success(), "the start the kill broke fails");
    wait_for(
        "`delete` to remove the pod's cgroup",
        Duration::from_secs(30),
        || (!cg.exists()).then_some(()),
    );
    let _ = c.ctr(&["task", "delete", "e1"]);
    assert!(c.ctr(&["containers", "rm", "e1"]).status.success());
    c.assert_nothing_left();
}
