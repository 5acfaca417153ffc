//! `hull exec` into a running `hull run --name`: real QEMU, kernel, agent, virtiofsd.
//! One VM serves every case (boots are slow under TCG); the run's init traps SIGTERM
//! so the test can end it, and nothing may be left afterwards.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use hull_tests::run_helpers::*;
use hull_tests::*;

const NAME: &str = "exec-box";

fn exec(state: &TestState, args: &[&str], stdin: Option<&[u8]>) -> Output {
    hull_in(state.hull(), "exec", args, stdin)
}

/// Starts the long-running container and waits for its `ready` line.
fn start_box(state: &TestState) -> (Child, BufReader<std::process::ChildStdout>) {
    start_ready(
        state.hull(),
        &demo(&[
            "--name",
            NAME,
            "--hostname",
            "exec-host",
            "--",
            "sh",
            "-c",
            "trap 'echo init-term; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
        ]),
    )
}

#[test]
fn exec_into_a_running_container() {
    need_run!("exec_into_a_running_container");
    let state = TestState::new();
    let (mut hull, mut run_out) = start_box(&state);

    // The same container: its PID namespace (PID 1 is the run's command), hostname.
    let out = exec(
        &state,
        &[
            NAME,
            "--",
            "sh",
            "-c",
            "echo $$; tr '\\0' ' ' < /proc/1/cmdline; echo; hostname",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{}", output_text(&out));
    assert_ne!(lines[0], "1", "an exec is not the container's init");
    assert!(
        lines[1].starts_with("sh -c trap"),
        "PID 1 is the run's command: {text}"
    );
    assert_eq!(lines[2], "exec-host");

    // Exit codes, and stdout/stderr kept apart.
    let out = exec(
        &state,
        &[NAME, "--", "sh", "-c", "echo out; echo err >&2; exit 5"],
        None,
    );
    assert_eq!(out.status.code(), Some(5), "{}", output_text(&out));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");

    // stdin, byte-exact.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = exec(&state, &["-i", NAME, "--", "cat"], Some(&data));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out.stdout == data,
        "stdin came back changed ({} bytes)",
        out.stdout.len()
    );

    // With and without a terminal.
    let out = exec(
        &state,
        &[
            "-t",
            NAME,
            "--",
            "sh",
            "-c",
            "tty; test -t 1 && echo is-a-tty",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stdout(&out).contains("/dev/pts/"), "{}", output_text(&out));
    assert!(stdout(&out).contains("is-a-tty"), "{}", output_text(&out));
    let out = exec(
        &state,
        &[NAME, "--", "sh", "-c", "test -t 1 || echo no-tty"],
        None,
    );
    assert_eq!(stdout(&out), "no-tty\n", "{}", output_text(&out));

    // env, user and cwd given to exec.
    let out = exec(
        &state,
        &[
            "-e",
            "FOO=bar",
            "-u",
            "1000:1001",
            "-w",
            "/tmp",
            NAME,
            "--",
            "sh",
            "-c",
            "echo $FOO; id -u; id -g; pwd",
        ],
        None,
    );
    assert_eq!(
        stdout(&out),
        "bar\n1000\n1001\n/tmp\n",
        "{}",
        output_text(&out)
    );

    // A signal to `hull exec` reaches the process.
    let mut ex = state
        .hull()
        .args([
            "exec",
            NAME,
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("hull exec");
    let mut ex_out = BufReader::new(ex.stdout.take().expect("stdout"));
    let mut line = String::new();
    ex_out.read_line(&mut line).expect("ready");
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ex.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let mut rest = String::new();
    ex_out.read_to_string(&mut rest).expect("rest");
    assert_eq!(ex.wait().expect("wait").code(), Some(42), "{rest}");
    assert_eq!(rest, "got-term\n");

    // Bad input: an unknown sandbox, a taken name; neither disturbs the running one.
    let out = exec(&state, &["no-such-box", "--", "true"], None);
    assert_eq!(out.status.code(), Some(125), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("no sandbox \"no-such-box\""),
        "{}",
        output_text(&out)
    );
    let out = run(&state, &refs(&demo(&["--name", NAME, "--", "true"])));
    assert_eq!(out.status.code(), Some(125), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("already exists"),
        "{}",
        output_text(&out)
    );
    let out = exec(&state, &[NAME, "--", "echo", "still-here"], None);
    assert_eq!(stdout(&out), "still-here\n", "{}", output_text(&out));

    // The run ends as usual, and takes everything with it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hull.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal run");
    let mut rest = String::new();
    run_out.read_to_string(&mut rest).expect("run output");
    assert_eq!(hull.wait().expect("wait").code(), Some(0), "{rest}");
    assert_eq!(rest, "init-term\n");
    wait_for("the VM to be gone", Duration::from_secs(10), || {
        state.leftover_vm_dirs().is_empty().then_some(())
    });
    state.assert_nothing_left();
    let out = exec(&state, &[NAME, "--", "true"], None);
    assert!(stderr(&out).contains("no sandbox"), "{}", output_text(&out));
}
