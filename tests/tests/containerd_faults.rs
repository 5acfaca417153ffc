//! Faults under a running containerd task beyond QEMU and the shim (containerd.rs has
//! those): the VM's helpers (virtiofsd, vhost-device-vsock) killed, and the guest agent
//! crashed through `hull debug crash-agent`. Each must stop the task with a non-zero exit
//! (a VM that lost its rootfs server or its agent channel is killed, not left hanging)
//! and leave nothing behind once the task is deleted. `scripts/soak` runs every
//! component at every lifecycle step; these are the quick ones for every CI run.

use std::time::Duration;

use hull_tests::containerd::Containerd;
use hull_tests::{output_text, processes_mentioning, wait_for};

macro_rules! need_containerd {
    ($name:expr) => {
        if !hull_tests::containerd::require_containerd($name) {
            return;
        }
    };
}

/// Starts task `id` (debug processes allowed, for the agent crash), injects `fault`,
/// and checks containerd's view and that nothing is left.
fn fault_stops_the_task(id: &str, fault: impl FnOnce(&Containerd, &str)) {
    let c = Containerd::start();
    c.run_debuggable(id);
    fault(&c, id);
    wait_for("the task to stop", Duration::from_secs(60), || {
        (c.task_status(id).as_deref() == Some("STOPPED")).then_some(())
    });
    let out = c.ctr(&["task", "delete", id]);
    assert!(out.status.success(), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("non-zero exit code"),
        "a non-zero status: {}",
        output_text(&out)
    );
    assert!(c.ctr(&["containers", "rm", id]).status.success());
    c.assert_nothing_left();
}

/// SIGKILLs every process of this containerd's VMs whose command starts with `program`
/// (virtiofsd runs as a parent and its sandboxed child).
fn kill_helper(c: &Containerd, program: &str) {
    let found: Vec<_> = processes_mentioning(&c.state.path().to_string_lossy())
        .into_iter()
        .filter(|(_, cmd)| {
            cmd.split_whitespace()
                .next()
                .is_some_and(|p| p.ends_with(program))
        })
        .collect();
    assert!(!found.is_empty(), "no {program} among the VM's processes");
    for (pid, _) in found {
        // It may be gone already: its parent's death takes a sandboxed child with it.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn virtiofsd_killed_under_a_running_task_stops_it() {
    need_containerd!("virtiofsd_killed_under_a_running_task_stops_it");
    fault_stops_the_task("fs1", |c, _| kill_helper(c, "virtiofsd"));
}

#[test]
fn vsock_backend_killed_under_a_running_task_stops_it() {
    need_containerd!("vsock_backend_killed_under_a_running_task_stops_it");
    fault_stops_the_task("vs1", |c, _| kill_helper(c, "vhost-device-vsock"));
}

#[test]
fn agent_crash_stops_the_task() {
    need_containerd!("agent_crash_stops_the_task");
    fault_stops_the_task("ag1", |c, id| {
        let out = c
            .state
            .hull()
            .args(["debug", "crash-agent", &c.sandbox_of(id)])
            .output()
            .expect("hull debug crash-agent");
        assert!(out.status.success(), "{}", output_text(&out));
    });
}

/// Without `[debug] exec = true` the agent refuses the crash request, by name.
#[test]
fn crash_agent_needs_debug_processes() {
    need_containerd!("crash_agent_needs_debug_processes");
    let c = Containerd::start();
    c.run_detached("nd1", &["sleep", "1000"]);
    let sandbox = c.sandbox_of("nd1");
    let out = c
        .state
        .hull()
        .args(["debug", "crash-agent", &sandbox])
        .output()
        .expect("hull debug crash-agent");
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without debug processes"),
        "{}",
        output_text(&out)
    );
    assert_eq!(c.task_status("nd1").as_deref(), Some("RUNNING"));
    c.kill_and_remove("nd1");
    c.assert_nothing_left();
}

/// The agent's fds in the guest (`/proc/1/fd`), through a debug process.
fn agent_fds(c: &Containerd, sandbox: &str, id: &str) -> usize {
    let bb = format!("/run/hull/share/containers/{id}/rootfs/bin/busybox");
    let out = c
        .state
        .hull()
        .args(["debug", "exec", sandbox, "--", &bb, "ls", "/proc/1/fd"])
        .output()
        .expect("hull debug exec");
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count()
}

/// Execs into a long-lived container leave nothing open in the agent: `scripts/soak`
/// found every exec's stdin pipe kept until the container went, so after ~380 execs
/// the agent ran out of fds and every later exec failed.
#[test]
fn execs_leave_no_fds_in_the_agent() {
    need_containerd!("execs_leave_no_fds_in_the_agent");
    let c = Containerd::start();
    c.run_debuggable("ex1");
    let sandbox = c.sandbox_of("ex1");
    let before = agent_fds(&c, &sandbox, "ex1");
    for i in 0..20 {
        let exec_id = format!("e{i}");
        let out = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            "ex1",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ]);
        assert!(out.status.success(), "exec {i}: {}", output_text(&out));
    }
    let after = agent_fds(&c, &sandbox, "ex1");
    assert_eq!(after, before, "the agent's fds before and after 20 execs");
    c.kill_and_remove("ex1");
    c.assert_nothing_left();
}
