//! A VM's life from launch to nothing left: real QEMU, real guest kernel, real agent.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use hull_runtime::config::Config;
use hull_runtime::host;
use hull_runtime::hypervisor;
use hull_runtime::sandbox::{BootStage, Sandbox, SandboxError, SandboxSpec};
use hull_tests::*;

#[test]
fn hull_vm_ping_prints_agent_version_and_guest_kernel() {
    if !require_vm("hull_vm_ping_prints_agent_version_and_guest_kernel") {
        return;
    }
    let state = TestState::new();
    let out = state
        .hull()
        .args(["vm", "ping"])
        .output()
        .expect("run hull");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("agent: hull-agent {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let kernel_line = stdout
        .lines()
        .find(|l| l.starts_with("guest kernel: "))
        .unwrap_or_else(|| panic!("no guest kernel line: {text}"));
    assert!(kernel_line.contains("guest kernel: 6.1"), "{text}");
    assert!(stdout.contains("ready in "), "{text}");
    state.assert_nothing_left();
}

#[tokio::test]
async fn sandbox_processes_and_files_exist_while_up_and_are_gone_after_destroy() {
    if !require_vm("sandbox_processes_and_files_exist_while_up_and_are_gone_after_destroy") {
        return;
    }
    let state = TestState::new();
    let config = state.config();
    let spec = SandboxSpec::from_config(&config);
    let sandbox = Sandbox::boot(
        &config,
        &spec,
        hypervisor::select(&config).expect("backend"),
    )
    .await
    .expect("boot");
    let pids = sandbox.pids();
    assert_eq!(pids.len(), 2, "qemu and vhost-device-vsock: {pids:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)));
    let dir = sandbox.state_dir().to_path_buf();
    // (vhost-device-vsock removes its vhost-user socket once QEMU has connected.)
    for f in [
        "console.log",
        "jail/sock/vsock.sock",
        "qemu.log",
        "vhost-vsock.log",
    ] {
        assert!(dir.join(f).exists(), "{f} missing in {}", dir.display());
    }
    let console = std::fs::read_to_string(dir.join("console.log")).expect("console log");
    assert!(console.contains("hull-agent: started"), "{console}");
    let v = sandbox.agent_version().await.expect("version");
    assert_eq!(v.api_version, hull_proto::API_VERSION);
    assert!(v.kernel_release.starts_with("6.1"), "{v:?}");
    let r = sandbox.boot_report().clone();
    assert!(r.kernel.is_some() && r.init.is_some(), "{r:?}");
    assert!(r.kernel <= r.init && r.init <= Some(r.agent_ready) && r.agent_ready <= r.connected);

    sandbox.destroy().await.expect("destroy");
    for p in &pids {
        assert!(!pid_alive(*p), "pid {p} still alive after destroy");
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    state.assert_nothing_left();
}

#[test]
fn missing_kernel_is_named_and_nothing_is_left() {
    if !require_vm("missing_kernel_is_named_and_nothing_is_left") {
        return;
    }
    let state = TestState::new();
    let out = state
        .hull()
        .args(["vm", "ping", "--kernel", "/nonexistent/vmlinux-hull"])
        .output()
        .expect("run hull");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vmlinux-hull"),
        "{text}"
    );
    state.assert_nothing_left();
}

#[test]
fn corrupt_kernel_and_initrd_files_are_named_and_nothing_is_left() {
    if !require_vm("corrupt_kernel_and_initrd_files_are_named_and_nothing_is_left") {
        return;
    }
    let state = TestState::new();
    let junk = state.path().join("junk.img");
    std::fs::write(&junk, b"this is neither a kernel nor an initramfs\n").expect("write");
    for flag in ["--kernel", "--initrd"] {
        let out = state
            .hull()
            .args(["vm", "ping", flag])
            .arg(&junk)
            .output()
            .expect("run hull");
        let text = output_text(&out);
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&*junk.to_string_lossy()), "{flag}: {text}");
        assert!(stderr.contains("is not"), "{flag}: {text}");
        state.assert_nothing_left();
    }
}

#[test]
fn initrd_that_fails_to_unpack_reports_the_init_stage_with_console_tail() {
    if !require_vm("initrd_that_fails_to_unpack_reports_the_init_stage_with_console_tail") {
        return;
    }
    let state = TestState::new();
    // A gzip header followed by garbage passes the magic check; the guest kernel then
    // fails to unpack it, finds no /init and panics (panic=-1 reboots, QEMU exits).
    let bad = state.path().join("bad-initrd.cpio.gz");
    let mut f = std::fs::File::create(&bad).expect("create");
    f.write_all(&[0x1f, 0x8b, 0x08, 0x00]).expect("write");
    f.write_all(&[0x5a; 4096]).expect("write");
    drop(f);
    let out = state
        .hull()
        .args(["vm", "ping", "--initrd"])
        .arg(&bad)
        .output()
        .expect("run hull");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&*bad.to_string_lossy()), "{text}");
    assert!(stderr.contains("the agent to start as /init"), "{text}");
    assert!(stderr.contains("last console lines"), "{text}");
    assert!(stderr.contains("Kernel panic"), "{text}");
    state.assert_nothing_left();
}

#[tokio::test]
async fn an_init_that_is_not_the_agent_is_reported_as_the_init_stage() {
    if !require_vm("an_init_that_is_not_the_agent_is_reported_as_the_init_stage") {
        return;
    }
    let floor = floor_initrd();
    assert!(
        floor.exists(),
        "{} missing (guest-image/build makes it)",
        floor.display()
    );
    let state = TestState::new();
    let config = state.config();
    let mut spec = SandboxSpec::from_config(&config);
    spec.initrd = floor;
    let err = match Sandbox::boot(
        &config,
        &spec,
        hypervisor::select(&config).expect("backend"),
    )
    .await
    {
        Ok(_) => panic!("a VM without the agent cannot become ready"),
        Err(e) => e,
    };
    match &err {
        SandboxError::Boot { stage, console, .. } => {
            assert_eq!(*stage, BootStage::Init, "{err}");
            assert!(console.contains("hull-floor: init reached"), "{err}");
        }
        other => panic!("unexpected error: {other}"),
    }
    state.assert_nothing_left();
}

#[test]
fn a_stage_that_never_comes_is_named_after_its_timeout() {
    if !require_vm("a_stage_that_never_comes_is_named_after_its_timeout") {
        return;
    }
    let state = TestState::new();
    let cfg = state.path().join("config.toml");
    // No kernel prints its banner within 1 ms of QEMU's launch.
    std::fs::write(&cfg, "[boot]\nkernel_timeout_secs = 0.001\n").expect("write config");
    let out = state
        .hull()
        .arg("--config")
        .arg(&cfg)
        .args(["vm", "ping"])
        .output()
        .expect("run hull");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("waiting for the guest kernel to start"),
        "{text}"
    );
    state.assert_nothing_left();
}

/// Starts `hull vm ping` and waits until its QEMU runs; returns (hull, qemu pid).
fn start_ping_and_wait_for_qemu(state: &TestState) -> (std::process::Child, i32) {
    let hull = state
        .hull()
        .args(["vm", "ping"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hull");
    let qemu = wait_for("QEMU to start", Duration::from_secs(20), || {
        state
            .processes()
            .into_iter()
            .find(|(_, cmd)| cmd.contains("qemu-system"))
            .map(|(pid, _)| pid)
    });
    (hull, qemu)
}

#[test]
fn killing_qemu_mid_boot_reports_it_with_the_console_tail() {
    if !require_vm("killing_qemu_mid_boot_reports_it_with_the_console_tail") {
        return;
    }
    let state = TestState::new();
    let (hull, qemu) = start_ping_and_wait_for_qemu(&state);
    // Let the kernel print something first, so there is a console tail to show.
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill qemu");
    let out = hull.wait_with_output().expect("hull exits");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("killed by SIGKILL"), "{text}");
    assert!(stderr.contains("last console lines"), "{text}");
    state.assert_nothing_left();
}

#[test]
fn sigterm_and_sigint_of_hull_tear_the_vm_down() {
    if !require_vm("sigterm_and_sigint_of_hull_tear_the_vm_down") {
        return;
    }
    for (sig, code) in [
        (nix::sys::signal::Signal::SIGTERM, 143),
        (nix::sys::signal::Signal::SIGINT, 130),
    ] {
        let state = TestState::new();
        let (hull, _qemu) = start_ping_and_wait_for_qemu(&state);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(hull.id() as i32), sig)
            .expect("signal hull");
        let out = hull.wait_with_output().expect("hull exits");
        assert_eq!(
            out.status.code(),
            Some(code),
            "{sig}: {}",
            output_text(&out)
        );
        state.assert_nothing_left();
    }
}

#[test]
fn hull_check_names_the_backend() {
    let out = Command::new(hull_bin())
        .arg("check")
        .output()
        .expect("run hull check");
    let text = output_text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "KVM",
        "QEMU",
        "vhost-device-vsock",
        "virtiofsd",
        "guest kernel",
        "guest initrd",
        "cgroup v2",
        "containerd",
        "hull-vmm:",
        "backend:",
    ] {
        assert!(stdout.contains(name), "{name} missing: {text}");
    }
    // Exit status and the backend line agree.
    assert_eq!(
        out.status.success(),
        !stdout.contains("backend: none"),
        "{text}"
    );
    if vm_prerequisites().is_ok() {
        assert!(out.status.success(), "{text}");
        // auto: hull-vmm where hardware KVM boots Linux and hull-vmm is installed,
        // QEMU everywhere else (this project's PVM machines: QEMU with TCG).
        let config = Config::default();
        let hull_vmm_here = host::kvm_kind().boots_linux()
            && host::find_binary(&config.hypervisor.hull_vmm).is_some();
        let want = if hull_vmm_here {
            "backend: hull-vmm (kvm)"
        } else {
            "backend: qemu"
        };
        assert!(stdout.contains(want), "{want}: {text}");
    }
}

#[tokio::test]
async fn a_fatal_agent_error_stops_the_vm_instead_of_hanging_it() {
    if !require_vm("a_fatal_agent_error_stops_the_vm_instead_of_hanging_it") {
        return;
    }
    let state = TestState::new();
    let config = state.config();
    let mut spec = SandboxSpec::from_config(&config);
    // Everything after `--` reaches /init's argv: the agent refuses the argument, says
    // FATAL on the console and powers the VM off (PID 1 must never just exit or hang).
    spec.kernel_params = "-- --no-such-agent-flag".into();
    let err = match Sandbox::boot(
        &config,
        &spec,
        hypervisor::select(&config).expect("backend"),
    )
    .await
    {
        Ok(_) => panic!("an agent that refuses its arguments cannot become ready"),
        Err(e) => e,
    };
    match &err {
        SandboxError::Boot {
            message, console, ..
        } => {
            assert!(message.contains("the VM stopped"), "{err}");
            assert!(
                message.contains("exit code 0"),
                "the guest rebooted cleanly: {err}"
            );
            assert!(console.contains("FATAL"), "{err}");
            assert!(console.contains("--no-such-agent-flag"), "{err}");
            assert!(
                !console.contains("Attempted to kill init"),
                "the agent must not exit: {err}"
            );
        }
        other => panic!("unexpected error: {other}"),
    }
    state.assert_nothing_left();
}

#[test]
fn vm_ping_with_the_share_attached_runs_virtiofsd_and_leaves_nothing() {
    if !require_run("vm_ping_with_the_share_attached_runs_virtiofsd_and_leaves_nothing") {
        return;
    }
    let state = TestState::new();
    let hull = state
        .hull()
        .args(["vm", "ping", "--share"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hull");
    wait_for("virtiofsd to start", Duration::from_secs(20), || {
        state
            .processes()
            .into_iter()
            .find(|(_, c)| c.contains("virtiofsd"))
            .map(|_| ())
    });
    let out = hull.wait_with_output().expect("hull");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("healthy"),
        "{text}"
    );
    state.assert_nothing_left();
}
