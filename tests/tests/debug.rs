//! `hull debug exec`: a command in the guest itself, outside the container, with real
//! QEMU, kernel, agent and virtiofsd. One sandbox booted with `[debug] exec = true`,
//! one with the default config (debug off); nothing may be left afterwards.

use std::io::{BufReader, Read};
use std::process::{Child, Output};

use hull_tests::run_helpers::*;
use hull_tests::*;

/// The demo image's busybox, as the guest sees it in the sandbox share.
fn busybox(name: &str) -> String {
    format!("/run/hull/share/containers/{name}/rootfs/bin/busybox")
}

fn hull_cfg(state: &TestState, config: Option<&std::path::Path>) -> std::process::Command {
    let mut c = state.hull();
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c
}

/// Starts a long-running named container and waits for its `ready` line.
fn start_box(
    state: &TestState,
    config: Option<&std::path::Path>,
    name: &str,
) -> (Child, BufReader<std::process::ChildStdout>) {
    start_ready(
        hull_cfg(state, config),
        &demo(&[
            "--name",
            name,
            "--",
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo ready; while :; do sleep 0.1; done",
        ]),
    )
}

fn stop_box(mut hull: Child, mut out: BufReader<std::process::ChildStdout>) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hull.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal hull run");
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert_eq!(hull.wait().expect("wait").code(), Some(0), "{rest}");
}

fn debug_exec(state: &TestState, args: &[&str]) -> Output {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    hull_in(state.hull(), "debug", &all, None)
}

#[test]
fn debug_exec_runs_in_the_guest_outside_the_container() {
    need_run!("debug_exec_runs_in_the_guest_outside_the_container");
    let state = TestState::new();
    let cfg = state.path().join("debug.toml");
    std::fs::write(&cfg, "[debug]\nexec = true\n").expect("config");
    const NAME: &str = "dbg-box";
    let (hull, out) = start_box(&state, Some(&cfg), NAME);
    let bb = busybox(NAME);

    // PID 1 seen by the debug process is the agent, not the container's command.
    let dbg = debug_exec(&state, &[NAME, "--", &bb, "cat", "/proc/1/cmdline"]);
    assert_eq!(dbg.status.code(), Some(0), "{}", output_text(&dbg));
    let pid1 = String::from_utf8_lossy(&dbg.stdout).replace('\0', " ");
    let ctr = hull_in(
        state.hull(),
        "exec",
        &[NAME, "--", "cat", "/proc/1/cmdline"],
        None,
    );
    assert_eq!(ctr.status.code(), Some(0), "{}", output_text(&ctr));
    let ctr_pid1 = String::from_utf8_lossy(&ctr.stdout).replace('\0', " ");
    assert!(
        ctr_pid1.starts_with("sh -c trap"),
        "the container's PID 1: {ctr_pid1:?}"
    );
    assert!(
        !pid1.trim().is_empty() && !pid1.starts_with("sh "),
        "the guest's PID 1: {pid1:?}"
    );

    // Another mount namespace than the container's.
    let dbg = debug_exec(&state, &[NAME, "--", &bb, "readlink", "/proc/self/ns/mnt"]);
    let ctr = hull_in(
        state.hull(),
        "exec",
        &[NAME, "--", "readlink", "/proc/self/ns/mnt"],
        None,
    );
    assert!(
        stdout(&dbg).starts_with("mnt:[") && stdout(&ctr).starts_with("mnt:["),
        "{} / {}",
        output_text(&dbg),
        output_text(&ctr)
    );
    assert_ne!(
        stdout(&dbg),
        stdout(&ctr),
        "debug exec ran in the container's mount namespace"
    );

    // Exit codes and stderr come back; a tty works and has a size.
    let dbg = debug_exec(
        &state,
        &[NAME, "--", &bb, "sh", "-c", "echo err >&2; exit 7"],
    );
    assert_eq!(dbg.status.code(), Some(7), "{}", output_text(&dbg));
    assert_eq!(stderr(&dbg), "err\n");
    let script = format!("{bb} tty; {bb} stty size");
    let dbg = debug_exec(&state, &["-t", NAME, "--", &bb, "sh", "-c", &script]);
    assert_eq!(dbg.status.code(), Some(0), "{}", output_text(&dbg));
    assert!(
        stdout(&dbg).contains("/dev/pts/") && stdout(&dbg).contains("24 80"),
        "{}",
        output_text(&dbg)
    );
    // stdin with -i.
    let dbg = hull_in(
        state.hull(),
        "debug",
        &["exec", "-i", NAME, "--", &bb, "cat"],
        Some(b"piped in\n"),
    );
    assert_eq!(stdout(&dbg), "piped in\n", "{}", output_text(&dbg));

    // A command the guest does not have is named.
    let dbg = debug_exec(&state, &[NAME, "--", "no-such-tool"]);
    assert_eq!(dbg.status.code(), Some(125), "{}", output_text(&dbg));
    assert!(
        stderr(&dbg).contains("no-such-tool"),
        "{}",
        output_text(&dbg)
    );

    stop_box(hull, out);
    state.assert_nothing_left();
}

#[test]
fn debug_exec_is_refused_unless_enabled_and_names_unknown_sandboxes() {
    need_run!("debug_exec_is_refused_unless_enabled_and_names_unknown_sandboxes");
    let state = TestState::new();
    const NAME: &str = "nodbg-box";
    let (hull, out) = start_box(&state, None, NAME);
    let bb = busybox(NAME);

    // The host refuses from the sandbox's record...
    let dbg = debug_exec(&state, &[NAME, "--", &bb, "true"]);
    assert_eq!(dbg.status.code(), Some(125), "{}", output_text(&dbg));
    assert!(
        stderr(&dbg).contains("booted without debug processes")
            && stderr(&dbg).contains("[debug] exec = true"),
        "{}",
        output_text(&dbg)
    );

    // ...and the agent, the policy point, refuses on its own: a record claiming debug
    // does not help.
    let record = state.path().join("vms").join(NAME).join("sandbox.json");
    let text = std::fs::read_to_string(&record).expect("sandbox.json");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json["debug_exec"] = serde_json::Value::Bool(true);
    std::fs::write(&record, serde_json::to_vec(&json).expect("json")).expect("write record");
    let dbg = debug_exec(&state, &[NAME, "--", &bb, "true"]);
    assert_eq!(dbg.status.code(), Some(125), "{}", output_text(&dbg));
    assert!(
        stderr(&dbg).contains("permission denied")
            && stderr(&dbg).contains("debug processes are not allowed"),
        "{}",
        output_text(&dbg)
    );

    // An unknown sandbox is named.
    let dbg = debug_exec(&state, &["no-such-box", "--", "true"]);
    assert_eq!(dbg.status.code(), Some(125), "{}", output_text(&dbg));
    assert!(
        stderr(&dbg).contains("no sandbox \"no-such-box\""),
        "{}",
        output_text(&dbg)
    );

    stop_box(hull, out);
    state.assert_nothing_left();
}
