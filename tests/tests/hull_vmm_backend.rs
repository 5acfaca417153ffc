//! The hull-vmm backend with the real `hull-vmm` binary: failures named with nothing
//! left behind, selection on this host, and a freestanding guest (it cannot be Linux
//! on a PVM host) driving the vsock device while the runtime's own hybrid-vsock client
//! talks to it through the backend's socket.
//!
//! Needs `hull-vmm` built next to this test (`cargo build --release -p hull-vmm`;
//! scripts/test builds every binary) and, for the guest, GNU binutils and /dev/kvm.

#[path = "../../vmm/tests/common/guests.rs"]
mod guests;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_runtime::agent_client::{self, hybrid_vsock, GuestListener};
use hull_runtime::config::Config;
use hull_runtime::hypervisor::hull_vmm::{HullVmm, HullVmmConfig};
use hull_runtime::hypervisor::{Hypervisor, HypervisorError, VmSpec};
use hull_runtime::sandbox::{Sandbox, SandboxError, SandboxSpec};
use hull_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The hull-vmm binary beside this test, or why the test cannot run.
fn hull_vmm_bin(test: &str) -> Option<PathBuf> {
    let p = target_bin("hull-vmm");
    if p.exists() {
        return Some(p);
    }
    let why = format!(
        "{} is missing (cargo build --release -p hull-vmm; scripts/test does)",
        p.display()
    );
    if std::env::var("HULL_REQUIRE_E2E").as_deref() == Ok("1") {
        panic!("{test}: cannot run and HULL_REQUIRE_E2E=1: {why}");
    }
    println!("SKIP {test}: {why}");
    None
}

/// The hull-vmm binary when this host can also run VMs, or why the test skips.
fn hull_vmm_and_kvm(test: &str) -> Option<PathBuf> {
    let bin = hull_vmm_bin(test)?;
    let h = hull_vmm::host_support();
    if !h.can_run_vms() {
        println!("SKIP {test}: {}", h.summary());
        return None;
    }
    Some(bin)
}

/// Dials guest port 1024 (the agent's) through the backend's hybrid socket `uds`, sends
/// `msg` and reads back as many bytes.
async fn echo(uds: &Path, msg: &[u8], limit: Duration) -> Result<Vec<u8>, String> {
    let mut s = hybrid_vsock::connect(uds, hull_proto::AGENT_VSOCK_PORT, limit)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(msg).await.map_err(|e| e.to_string())?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(limit, s.read_exact(&mut back))
        .await
        .map_err(|_| "no echo".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(back)
}

/// The VM of the freestanding guest `act=a` (announces itself, then echoes on 1024).
fn guest_vm_spec(
    id: &str,
    dir: &Path,
    sock_dir: &Path,
    guests: &guests::Guests,
    state: &TestState,
) -> VmSpec {
    VmSpec {
        id: id.into(),
        state_dir: dir.to_path_buf(),
        sock_dir: sock_dir.to_path_buf(),
        jail: None,
        kernel: guests.elf64.clone(),
        initrd: tiny_initrd(state.path()),
        cmdline: "act=a".into(),
        vcpus: 1,
        memory_mib: 32,
        vsock: true,
        restore: None,
        devices: Vec::new(),
    }
}

fn backend(binary: &Path) -> Box<dyn Hypervisor> {
    Box::new(HullVmm::new(HullVmmConfig {
        binary: binary.to_path_buf(),
        virtiofsd: None,
    }))
}

/// A file with a gzip magic: passes the initrd check (hull-vmm loads it as is).
fn tiny_initrd(dir: &Path) -> PathBuf {
    let p = dir.join("initrd.gz");
    std::fs::write(&p, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).expect("initrd");
    p
}

fn spec_with(config: &Config, kernel: PathBuf, initrd: PathBuf) -> SandboxSpec {
    let mut spec = SandboxSpec::from_config(config);
    spec.kernel = kernel;
    spec.initrd = initrd;
    spec.memory_mib = 64;
    spec
}

fn config_for(state: &TestState) -> Config {
    let mut c = state.config();
    c.boot.kernel_timeout_secs = 20.0;
    c
}

#[tokio::test]
async fn a_kernel_hull_vmm_cannot_load_is_named_and_nothing_is_left() {
    let test = "a_kernel_hull_vmm_cannot_load_is_named_and_nothing_is_left";
    let Some(bin) = hull_vmm_and_kvm(test) else {
        return;
    };
    let state = TestState::new();
    let config = config_for(&state);
    // ELF magic (passes the runtime's check), then garbage: hull-vmm's loader refuses it.
    let kernel = state.path().join("corrupt-vmlinux");
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.extend(std::iter::repeat_n(0xa5u8, 4096));
    std::fs::write(&kernel, bytes).expect("kernel");
    let spec = spec_with(&config, kernel.clone(), tiny_initrd(state.path()));
    let err = match Sandbox::boot(&config, &spec, backend(&bin)).await {
        Ok(_) => panic!("a corrupt kernel cannot boot"),
        Err(e) => e,
    };
    let msg = err.to_string();
    println!("error: {msg}");
    assert!(
        matches!(
            err,
            SandboxError::Hypervisor(HypervisorError::VmmExited { .. })
        ),
        "{msg}"
    );
    assert!(msg.contains(&*kernel.to_string_lossy()), "{msg}");
    assert!(
        msg.contains("exit code 2") && msg.contains("cannot load the kernel"),
        "{msg}"
    );
    state.assert_nothing_left();
}

#[tokio::test]
async fn missing_kernel_or_hull_vmm_binary_is_named_and_nothing_is_left() {
    let state = TestState::new();
    let config = config_for(&state);
    let initrd = tiny_initrd(state.path());
    let missing_kernel = state.path().join("no-such-vmlinux");
    let spec = spec_with(&config, missing_kernel.clone(), initrd.clone());
    let err = Sandbox::boot(&config, &spec, backend(Path::new("/bin/true")))
        .await
        .err()
        .expect("missing kernel");
    let msg = err.to_string();
    assert!(
        msg.contains(&*missing_kernel.to_string_lossy()) && msg.contains("does not exist"),
        "{msg}"
    );
    state.assert_nothing_left();

    let kernel = state.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF\x02\x01\x01").expect("kernel");
    let spec = spec_with(&config, kernel, initrd);
    let err = Sandbox::boot(&config, &spec, backend(Path::new("/nonexistent/hull-vmm")))
        .await
        .err()
        .expect("missing binary");
    let msg = err.to_string();
    println!("error: {msg}");
    assert!(msg.contains("/nonexistent/hull-vmm"), "{msg}");
    state.assert_nothing_left();
}

#[test]
fn hull_check_and_ping_with_backend_hull_vmm_follow_the_host() {
    let state = TestState::new();
    let conf = state.path().join("config.toml");
    std::fs::write(&conf, "[hypervisor]\nbackend = \"hull-vmm\"\n").expect("config");
    let check = Command::new(hull_bin())
        .arg("--config")
        .arg(&conf)
        .arg("check")
        .output()
        .expect("hull check");
    let text = output_text(&check);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(stdout.contains("hull-vmm"), "{text}");
    let h = hull_vmm::host_support();
    if h.can_boot_linux() {
        println!("SKIP the refusal half of hull_check_and_ping_with_backend_hull_vmm_follow_the_host: this host has hardware KVM");
        return;
    }
    // Asked for where it cannot run: no backend, the reason named, non-zero exit.
    assert!(!check.status.success(), "{text}");
    assert!(stdout.contains("backend: none can run here"), "{text}");
    assert!(stdout.contains("cannot run here"), "{text}");
    if h.kind == hull_vmm::KvmKind::Pvm {
        assert!(stdout.contains("PVM"), "{text}");
    }
    let ping = state
        .hull()
        .arg("--config")
        .arg(&conf)
        .args(["vm", "ping"])
        .output()
        .expect("hull vm ping");
    let text = output_text(&ping);
    assert!(!ping.status.success(), "{text}");
    let stderr = String::from_utf8_lossy(&ping.stderr);
    assert!(
        stderr.contains("hull-vmm") && stderr.contains("cannot run here"),
        "{text}"
    );
    state.assert_nothing_left();
}

/// The backend boots a freestanding guest (`act=a` in vmm/tests/guests/virtio64.S:
/// brings up virtio-vsock through virtio-mmio, announces itself on host port 1025 as
/// hull-agent does, then accepts `CONNECT 1024` and echoes one packet) and the runtime's
/// own vsock code, unchanged, does what the sandbox's boot does: listens on
/// `<uds>_1025` before launch, reads the announcement, then dials guest port 1024
/// through the backend's socket. Then stop: no process, no socket.
#[tokio::test]
async fn freestanding_guest_answers_the_runtime_vsock_client_through_the_backend() {
    echo_through_the_backend(
        "freestanding_guest_answers_the_runtime_vsock_client_through_the_backend",
        false,
    )
    .await;
}

/// The same with hull-vmm jailed as a sandbox jails it: the guest still answers, and
/// /proc shows hull-vmm under the sandbox uid, in a mount namespace of its own, with
/// no capabilities and no_new_privs.
#[tokio::test]
async fn jailed_hull_vmm_runs_the_guest_as_the_sandbox_uid() {
    echo_through_the_backend("jailed_hull_vmm_runs_the_guest_as_the_sandbox_uid", true).await;
}

async fn echo_through_the_backend(test: &str, jailed: bool) {
    let Some(bin) = hull_vmm_and_kvm(test) else {
        return;
    };
    let state = TestState::new();
    let guests = guests::build_guests(&state.path().join("guests")).expect("guests");
    let vm_dir = state.path().join("vms").join("guest");
    std::fs::create_dir_all(&vm_dir).expect("vm dir");
    let jail = jailed.then(|| {
        std::sync::Arc::new(
            hull_runtime::jail::Jail::create(&Config::default().jail, &vm_dir, "guest")
                .expect("jail"),
        )
    });
    let sock_dir = jail
        .as_ref()
        .map_or_else(|| vm_dir.clone(), |j| j.sock_dir().to_path_buf());
    let mut spec = guest_vm_spec("guest", &vm_dir, &sock_dir, &guests, &state);
    spec.jail = jail.clone();
    // As the sandbox does: listen for the announcement before anything can send it.
    let uds_expected = sock_dir.join("vsock.sock");
    let announce = GuestListener::bind(&uds_expected, hull_proto::ANNOUNCE_VSOCK_PORT)
        .expect("announce listener");
    if let Some(j) = &jail {
        j.give(announce.path())
            .expect("give the announce socket to the jail");
    }
    let mut hv = backend(&bin);
    let console = hv.launch(&spec).await.expect("launch");
    let uds = hv.vsock_uds().expect("vsock socket");
    assert_eq!(uds, uds_expected);
    assert!(uds.exists());
    let pids = hv.pids();
    assert_eq!(
        pids.len(),
        1,
        "hull-vmm only (no virtiofsd without a share)"
    );
    if let Some(j) = &jail {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            field("Uid"),
            j.uid().to_string(),
            "hull-vmm runs as the sandbox uid"
        );
        assert_eq!(field("CapEff"), "0000000000000000");
        assert_eq!(field("CapBnd"), "0000000000000000");
        assert_eq!(field("NoNewPrivs"), "1");
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("mnt ns");
        assert_ne!(
            ns(&pids[0].to_string()),
            ns("self"),
            "hull-vmm has a mount namespace of its own"
        );
    }

    let limit = Duration::from_secs(120);
    let msg = b"ping from the runtime\n";
    let talk = async {
        let mut announced = tokio::time::timeout(limit, announce.accept())
            .await
            .map_err(|_| "no announcement".to_string())?
            .map_err(|e| e.to_string())?;
        let api = agent_client::read_announcement(&mut announced, limit)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(api, hull_proto::API_VERSION);
        println!(
            "guest announced itself on {} (API {api})",
            announce.path().display()
        );
        echo(&uds, msg, limit).await
    };
    let outcome = tokio::select! {
        r = talk => Ok(r),
        status = hv.wait() => Err(status),
    };
    // Lossy: the guest prints the first bytes of its initrd.
    let console_text = || {
        String::from_utf8_lossy(&std::fs::read(console.log_path()).unwrap_or_default()).into_owned()
    };
    match outcome {
        Ok(Ok(back)) => {
            assert_eq!(back, msg);
            // The guest reports its steps on the console, read through the backend's pipe.
            // (console.log is written by the reader task a moment after the guest prints)
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                while !console_text().contains("vsock: echoed") {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            let text = console_text();
            for line in [
                "vsock: virtio-mmio v2, device 19",
                "vsock: announced",
                "vsock: connected",
                "vsock: echoed",
            ] {
                assert!(text.contains(line), "{line:?} missing: {text}");
            }
            assert!(
                text.contains("virtio_mmio.device=4K@0xd0000000:5"),
                "announced: {text}"
            );
            println!(
                "guest echoed {:?} through the backend's hybrid vsock",
                String::from_utf8_lossy(&back)
            );
        }
        Ok(Err(e)) => panic!(
            "client: {e}\nconsole: {}\n{}",
            console_text(),
            hv.diagnostics()
        ),
        Err(status) => {
            let diag = hv.diagnostics();
            // Exit 6: the guest could not run on this KVM (PVM's emulator lacks an
            // instruction): say so, the device-model tests carry the proof.
            if status.as_ref().ok().and_then(|s| s.code()) == Some(6) {
                println!("SKIP {test}: this host's KVM cannot run the guest ({status:?}): {diag}");
                hv.stop(Duration::from_secs(2)).await.expect("stop");
                return;
            }
            panic!(
                "hull-vmm exited before the echo: {status:?}\nconsole: {}\n{diag}",
                console_text()
            );
        }
    }
    hv.stop(Duration::from_secs(5)).await.expect("stop");
    assert!(hv.pids().is_empty(), "stopped and reaped");
    for p in pids {
        assert!(!pid_alive(p), "pid {p} alive after stop");
    }
    assert!(
        !uds.exists(),
        "hull-vmm removes its socket when the VM ends"
    );
    drop(announce);
    drop(spec);
    drop(jail);
    let _ = std::fs::remove_dir_all(&vm_dir);
    state.assert_nothing_left();
}

/// A template through the backend: an unjailed VM (the freestanding guest, `act=a`)
/// announces itself, the backend snapshots it through hull-vmm's API socket, and a
/// jailed clone started from the snapshot's files (opened here, inherited by the
/// jailed hull-vmm, which could not open the root-owned files itself) answers the
/// runtime's vsock client on its own socket without announcing again.
#[tokio::test]
async fn a_jailed_clone_restored_from_a_snapshot_answers_through_the_backend() {
    let test = "a_jailed_clone_restored_from_a_snapshot_answers_through_the_backend";
    let Some(bin) = hull_vmm_and_kvm(test) else {
        return;
    };
    let state = TestState::new();
    let guests = guests::build_guests(&state.path().join("guests")).expect("guests");
    let limit = Duration::from_secs(120);
    let vm_spec =
        |id: &str, dir: &Path, sock_dir: &Path| guest_vm_spec(id, dir, sock_dir, &guests, &state);

    // The template: boot, announce, snapshot, stop.
    let tpl_dir = state.path().join("vms").join("template");
    std::fs::create_dir_all(&tpl_dir).expect("vm dir");
    let spec = vm_spec("template", &tpl_dir, &tpl_dir);
    let announce =
        GuestListener::bind(&tpl_dir.join("vsock.sock"), hull_proto::ANNOUNCE_VSOCK_PORT)
            .expect("announce listener");
    let mut hv = backend(&bin);
    assert!(hv.can_restore());
    hv.launch(&spec).await.expect("launch");
    let announced = tokio::select! {
        a = tokio::time::timeout(limit, announce.accept()) => a,
        status = hv.wait() => {
            let status = status.expect("wait");
            if status.code() == Some(6) {
                println!("SKIP {test}: this host's KVM cannot run the guest: {}", hv.diagnostics());
                return;
            }
            panic!("the template VM ended: {status:?} {}", hv.diagnostics());
        }
    };
    let mut announced = announced.expect("announced in time").expect("accept");
    agent_client::read_announcement(&mut announced, limit)
        .await
        .expect("announcement");
    let snap = state.path().join("template-snapshot");
    hv.snapshot(&snap).await.expect("snapshot");
    let again = hv
        .snapshot(&snap)
        .await
        .expect_err("a second snapshot to the same dir");
    assert!(again.to_string().contains("already exists"), "{again}");
    hv.stop(Duration::from_secs(5)).await.expect("stop");
    drop(announce);
    for name in ["state.json", "memory"] {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(snap.join(name)).expect("snapshot file");
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0), "{name}");
    }

    // The clone: jailed, from the files opened here.
    let clone_dir = state.path().join("vms").join("clone");
    std::fs::create_dir_all(&clone_dir).expect("vm dir");
    let jail = std::sync::Arc::new(
        hull_runtime::jail::Jail::create(&Config::default().jail, &clone_dir, "clone")
            .expect("jail"),
    );
    let mut spec = vm_spec("clone", &clone_dir, jail.sock_dir());
    spec.jail = Some(jail.clone());
    spec.restore = Some(hull_runtime::hypervisor::SnapshotFiles {
        dir: snap.clone(),
        state: std::sync::Arc::new(std::fs::File::open(snap.join("state.json")).expect("state")),
        memory: std::sync::Arc::new(std::fs::File::open(snap.join("memory")).expect("memory")),
    });
    let mut clone = backend(&bin);
    let console = clone.launch(&spec).await.expect("launch the clone");
    let uds = clone.vsock_uds().expect("vsock socket");
    let msg = b"ping the clone\n";
    let talk = async { echo(&uds, msg, limit).await };
    let echoed = tokio::select! {
        r = talk => r,
        status = clone.wait() => Err(format!("the clone ended: {status:?}")),
    };
    let console_text = || {
        String::from_utf8_lossy(&std::fs::read(console.log_path()).unwrap_or_default()).into_owned()
    };
    let echoed =
        echoed.unwrap_or_else(|e| panic!("{e}\n{}\n{}", console_text(), clone.diagnostics()));
    assert_eq!(echoed, msg);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while !console_text().contains("vsock: echoed") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let text = console_text();
    assert!(
        text.contains("vsock: connected") && text.contains("vsock: echoed"),
        "{text}"
    );
    // (The guest may print "vsock: announced" after the host read the announcement,
    // so after the snapshot; what it printed before sending it never comes again.)
    assert!(
        !text.contains("vsock: queues ready") && !text.contains("boot protocol guest"),
        "the clone booted again: {text}"
    );
    clone.stop(Duration::from_secs(5)).await.expect("stop");
    assert!(clone.pids().is_empty());
    drop(spec);
    drop(jail);
    let _ = std::fs::remove_dir_all(state.path().join("vms"));
    let _ = std::fs::remove_dir_all(&snap);
    state.assert_nothing_left();
}
