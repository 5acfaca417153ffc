//! The jail of a sandbox's host processes (runtime/src/jail), checked from /proc on real
//! VMs started by `hull run` and by containerd: the hypervisor and vhost-device-vsock
//! run as a non-root sandbox uid with no capabilities and no_new_privs, in their own
//! mount namespace rooted in the jail, in the sandbox's cgroup; a process with their
//! credentials in their namespace cannot open a host file; virtiofsd keeps only its
//! reduced capability set; nothing is left after the sandbox ends or its shim is
//! SIGKILLed.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hull_runtime::config::{DEFAULT_HOST_OVERHEAD_MIB, DEFAULT_JAIL_UID_START};
use hull_runtime::sandbox::record::SandboxRecord;
use hull_tests::containerd::Containerd;
use hull_tests::run_helpers::{demo, start_ready};
use hull_tests::{need_run, output_text, processes_mentioning, TestState};

macro_rules! need_containerd {
    ($name:expr) => {
        if !hull_tests::containerd::require_containerd($name) {
            return;
        }
    };
}

/// `Key:\tvalue` lines of /proc/PID/status.
fn status(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in\n{status}"))
}

/// The process's path in the memory hierarchy (v1) or the unified one (v2).
fn memory_cgroup_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            (ctrls.split(',').any(|c| c == "memory")
                || (ctrls.is_empty() && !text.contains(":memory:")))
            .then(|| path.to_string())
        })
        .unwrap_or_default()
}

/// The jailed process `pid` of one VM: checks its credentials, namespace and view, and
/// returns its uid.
fn assert_jailed(pid: i32, name: &str, kernel: &Path) -> u32 {
    let st = status(pid);
    let uids: Vec<&str> = field(&st, "Uid").split_whitespace().collect();
    let gids: Vec<&str> = field(&st, "Gid").split_whitespace().collect();
    assert_eq!(uids.len(), 4, "{st}");
    assert!(
        uids.iter().all(|u| *u == uids[0]),
        "{name}: real, effective, saved, fs uid all the sandbox's: {st}"
    );
    assert!(
        gids.iter().all(|g| *g == uids[0]),
        "{name}: gids are the sandbox's: {st}"
    );
    let uid: u32 = uids[0].parse().expect("uid");
    assert!(
        uid >= DEFAULT_JAIL_UID_START,
        "{name}: uid {uid} from the jail's range"
    );
    assert_eq!(field(&st, "Groups"), uids[0], "{name}: no other group");
    assert_eq!(field(&st, "NoNewPrivs"), "1", "{name}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&st, cap), "0000000000000000", "{name}: {cap}");
    }
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").expect("own mnt ns");
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("its mnt ns");
    assert_ne!(ns, own_ns, "{name}: its own mount namespace");

    // Its root is the jail: no host secrets, no home dirs, no /etc at all.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    for absent in ["etc", "root", "home", "run", "sys", "boot"] {
        assert!(
            !root.join(absent).exists(),
            "{name}: /{absent} is not in its jail"
        );
    }
    // Every file it can see outside /usr, /proc and /dev is one of its own.
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    for f in &files {
        let ok = f.starts_with("/exe/")
            || f == kernel
            || f.to_string_lossy().ends_with(".cpio")
            || f.to_string_lossy().contains("/jail/sock/");
        assert!(
            ok,
            "{name}: unexpected file {} in its jail (all: {files:?})",
            f.display()
        );
    }

    // From inside: its credentials in its namespace cannot open a host file, and the
    // host's processes are invisible; what the jail holds is readable.
    let uid_s = uid.to_string();
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "-S", &uid_s, "-G", &uid_s, "--", "/usr/bin/sh", "-c"])
        .arg(format!(
            "cat /etc/hostname; cat /etc/shadow; cat /proc/1/environ; test -r {} && echo kernel-readable",
            kernel.display()
        ))
        .output()
        .expect("nsenter");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert!(
        !host_hostname.trim().is_empty() && !text.contains(host_hostname.trim()),
        "{name}: {text}"
    );
    assert!(err.contains("/etc/hostname: No such file"), "{name}: {err}");
    assert!(err.contains("/etc/shadow: No such file"), "{name}: {err}");
    assert!(
        err.contains("/proc/1/environ: No such file"),
        "{name}: {err}"
    );
    // (vhost-device-vsock's jail has no kernel: only the hypervisor's does.)
    if name.starts_with("qemu") {
        assert!(text.contains("kernel-readable"), "{name}: {text}\n{err}");
    }
    uid
}

/// Regular files under `dir` (seen through /proc/PID/root), as paths inside the jail,
/// skipping /usr, /proc and /dev.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let rel = Path::new("/").join(p.strip_prefix(root).expect("under root"));
        if ["/usr", "/proc", "/dev"].iter().any(|s| rel.starts_with(s)) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            walk(root, &p, out);
        } else if !m.file_type().is_symlink() {
            out.push(rel);
        }
    }
}

/// virtiofsd: root (it serves files of any owner), but with its reduced capability set,
/// no_new_privs and its own seccomp filter and mount namespace.
fn assert_virtiofsd_confined(pids: &[i32]) {
    let worker = pids
        .iter()
        .copied()
        .find(|p| field(&status(*p), "CapEff") != "0000000000000000")
        .unwrap_or_else(|| panic!("no virtiofsd worker among {pids:?}"));
    let st = status(worker);
    let eff = u64::from_str_radix(field(&st, "CapEff"), 16).expect("hex");
    // chown, dac_override, dac_read_search, fowner, fsetid, setgid, setuid, mknod, setfcap.
    let allowed: u64 = [0u32, 1, 2, 3, 4, 6, 7, 27, 31]
        .iter()
        .map(|b| 1u64 << b)
        .sum();
    assert_eq!(
        eff & !allowed,
        0,
        "virtiofsd has only its documented capabilities: {eff:x}"
    );
    assert_eq!(field(&st, "CapBnd"), "0000000000000000");
    assert_eq!(field(&st, "NoNewPrivs"), "1");
    assert_eq!(field(&st, "Seccomp"), "2");
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn hull_run_vm_processes_are_jailed_in_the_sandbox_cgroup() {
    need_run!("hull_run_vm_processes_are_jailed_in_the_sandbox_cgroup");
    let state = TestState::new();
    // What a SIGKILLed `hull run` leaves: an empty cgroup named for its jail uid. The
    // next sandbox that leases the uid removes it (these cover the uids this test's
    // sandboxes can get; the rest are removed at the end).
    let hierarchies: Vec<PathBuf> = if Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        ["memory", "pids"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join("hull"))
            .collect()
    } else {
        vec![PathBuf::from("/sys/fs/cgroup/hull")]
    };
    let stale = |uid: u32| {
        hierarchies
            .iter()
            .map(move |h| h.join(format!("stale-{uid}")))
    };
    let uids = DEFAULT_JAIL_UID_START..DEFAULT_JAIL_UID_START + 4;
    for d in uids.clone().flat_map(stale) {
        std::fs::create_dir_all(&d).expect("stale cgroup");
    }
    let args = demo(&[
        "--name",
        "jail1",
        "-m",
        "64M",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 600",
    ]);
    let (hull, _out) = start_ready(state.hull(), &args);
    let mut hull = KillOnDrop(hull);
    let record = SandboxRecord::load(state.path(), "jail1").expect("sandbox record");
    let pids: Vec<i32> = record.vm_pids.iter().map(|p| *p as i32).collect();
    let kernel = state.config().guest.kernel;
    let by_name = |n: &str| {
        pids.iter()
            .copied()
            .filter(|p| comm(*p).starts_with(n))
            .collect::<Vec<_>>()
    };
    let qemu = by_name("qemu-system")[0];
    let vsock = by_name("vhost-device-vs")[0];
    assert_eq!(
        QEMU_SECCOMP,
        field(&status(qemu), "Seccomp"),
        "QEMU runs with -sandbox on"
    );
    let u1 = assert_jailed(qemu, "qemu", &kernel);
    let u2 = assert_jailed(vsock, "vhost-device-vsock", &kernel);
    assert_eq!(u1, u2, "one uid per sandbox");
    // (The record holds virtiofsd's first process; its worker is a child of it.)
    let fs: Vec<i32> = state
        .processes()
        .into_iter()
        .filter(|(_, c)| c.contains("virtiofsd"))
        .map(|(p, _)| p)
        .collect();
    assert_virtiofsd_confined(&fs);

    // The sandbox's cgroup, limited to guest memory + the host overhead.
    let cg = format!("/hull/jail1-{u1}");
    for p in pids.iter().chain([hull.0.id() as i32].iter()) {
        assert_eq!(
            memory_cgroup_of(*p),
            cg,
            "pid {p} ({}) is in the sandbox's cgroup",
            comm(*p)
        );
    }
    let mem_dir = PathBuf::from(format!("/sys/fs/cgroup/memory{cg}"));
    if mem_dir.is_dir() {
        let limit = std::fs::read_to_string(mem_dir.join("memory.limit_in_bytes")).expect("limit");
        // (The guest gets at least guest.memory_mib.)
        let vm_mib = (64 + 128).max(u64::from(state.config().guest.memory_mib));
        assert_eq!(
            limit.trim(),
            ((vm_mib + u64::from(DEFAULT_HOST_OVERHEAD_MIB)) << 20).to_string()
        );
    }
    // The sockets are the sandbox uid's; hull exec (root) still reaches the agent.
    let sock = std::fs::metadata(&record.vsock_uds).expect("vsock socket");
    assert_eq!(sock.uid(), u1);
    let out = state
        .hull()
        .args(["exec", "jail1", "--", "echo", "via-exec"])
        .output()
        .expect("hull exec");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("via-exec"),
        "{}",
        output_text(&out)
    );

    // A second, concurrent sandbox gets another uid.
    let args2 = demo(&[
        "--name",
        "jail2",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 600",
    ]);
    let (hull2, _out2) = start_ready(state.hull(), &args2);
    let mut hull2 = KillOnDrop(hull2);
    let record2 = SandboxRecord::load(state.path(), "jail2").expect("second record");
    let qemu2 = record2
        .vm_pids
        .iter()
        .map(|p| *p as i32)
        .find(|p| comm(*p).starts_with("qemu-system"))
        .expect("qemu 2");
    let u3 = assert_jailed(qemu2, "qemu (second sandbox)", &kernel);
    assert_ne!(u1, u3, "concurrent sandboxes never share a uid");

    // (sleep is the container's PID 1 and ignores SIGTERM: hull tears down after
    // shutdown_timeout_secs.)
    for h in [&hull, &hull2] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(h.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM hull");
    }
    let mut stderr = String::new();
    for h in [&mut hull, &mut hull2] {
        if let Some(mut e) = h.0.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        h.0.wait().expect("hull exits");
    }
    state.assert_nothing_left();
    for cg in ["memory", "pids"] {
        for id in [format!("jail1-{u1}"), format!("jail2-{u3}")] {
            let d = PathBuf::from(format!("/sys/fs/cgroup/{cg}/hull/{id}"));
            assert!(
                !d.exists(),
                "{} removed; hull's stderr:\n{stderr}",
                d.display()
            );
        }
    }
    for uid in [u1, u3] {
        for d in stale(uid) {
            assert!(
                !d.exists(),
                "{} (stale) removed by the sandbox that leased {uid}",
                d.display()
            );
        }
    }
    for d in uids.flat_map(stale) {
        let _ = std::fs::remove_dir(d);
    }
    // (The parent too, unless some other sandbox uses it.)
    for h in &hierarchies {
        let _ = std::fs::remove_dir(h);
    }
}

/// A `hull run` that is SIGKILLed if the test fails before stopping it (its VM
/// processes die with it: parent-death signal).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// QEMU's `-sandbox on`: seccomp filter mode.
const QEMU_SECCOMP: &str = "2";

#[test]
fn containerd_vm_processes_are_jailed_and_nothing_is_left() {
    need_containerd!("containerd_vm_processes_are_jailed_and_nothing_is_left");
    let c = Containerd::start();
    let kernel = c.state.config().guest.kernel;
    c.run_detached("j1", &["sleep", "1000"]);
    let procs = c.state.processes();
    let find = |n: &str| {
        procs
            .iter()
            .filter(|(_, cmd)| cmd.contains(n))
            .map(|(p, _)| *p)
            .collect::<Vec<_>>()
    };
    let first = |n: &str| {
        find(n)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("no {n} among {procs:?}"))
    };
    let qemu = first("qemu-system");
    let uid = assert_jailed(qemu, "qemu", &kernel);
    assert_eq!(
        assert_jailed(first("vhost-device-vsock"), "vhost-device-vsock", &kernel),
        uid
    );
    assert_virtiofsd_confined(&find("virtiofsd"));
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    // The pod's cgroup (ctr's cgroupsPath is /<namespace>/<id>), which the shim is in.
    assert_eq!(memory_cgroup_of(qemu), "/default/j1");
    assert_eq!(memory_cgroup_of(shims[0].0), "/default/j1");
    c.kill_and_remove("j1");
    c.assert_nothing_left();

    // A SIGKILLed shim: its jailed processes die with it, `delete` removes the rest.
    c.run_detached("j2", &["sleep", "1000"]);
    let vm: Vec<i32> = processes_mentioning(&c.state.path().to_string_lossy())
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(!vm.is_empty());
    c.kill_shim("j2");
    assert!(c.ctr(&["containers", "rm", "j2"]).status.success());
    c.assert_nothing_left();
    for p in vm {
        assert!(
            !hull_tests::pid_alive(p as u32),
            "VM process {p} died with its shim"
        );
    }
    // No mount of the jail anywhere in the host's mount table.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let jails: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains("/jail/"))
        .filter(|l| l.contains(&*c.state.path().to_string_lossy()))
        .collect();
    assert!(jails.is_empty(), "{jails:?}");
}

#[test]
fn a_jail_that_cannot_be_set_up_is_a_clear_error_and_leaves_nothing() {
    need_run!("a_jail_that_cannot_be_set_up_is_a_clear_error_and_leaves_nothing");
    let state = TestState::new();
    let conf = state.path().join("config.toml");
    std::fs::write(&conf, "[jail]\nuid_count = 0\n").expect("config");
    let out = state
        .hull()
        .arg("--config")
        .arg(&conf)
        .arg("run")
        .args(demo(&["--", "true"]))
        .output()
        .expect("hull");
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("jail.uid_count = 0"),
        "{}",
        output_text(&out)
    );
    state.assert_nothing_left();
}
