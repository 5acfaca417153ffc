//! `hull run` end to end: real QEMU, guest kernel, agent and virtiofsd, the demo image
//! (scripts/demo-image): output, exit codes, signals, volumes, bad input. Every test
//! also checks that nothing is left: no process, no VM dir, no mount under its private
//! state dir (see also run_isolation.rs).
//!
//! Tests marked "host side" need nothing of the agent beyond boot and pass today;
//! the others need the agent's container support (CreateSandbox .. RemoveContainer).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hull_tests::run_helpers::*;
use hull_tests::*;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------- output and exit codes

#[test]
fn echo_prints_and_exits_zero() {
    need_run!("echo_prints_and_exits_zero");
    let state = TestState::new();
    let out = demo_run(&state, &["--", "echo", "hello from hull"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(stdout(&out), "hello from hull\n", "{}", output_text(&out));
}

/// A state dir whose VM socket paths are too long for a socket address: the sandbox
/// still boots, and nothing is left.
#[test]
fn a_state_dir_too_deep_for_socket_addresses_still_works() {
    need_run!("a_state_dir_too_deep_for_socket_addresses_still_works");
    let state = TestState::deep();
    assert!(
        state
            .path()
            .join("vms/0123456789abcdef/jail/sock/vsock.sock_1025")
            .as_os_str()
            .len()
            > 108
    );
    let out = demo_run(&state, &["--", "echo", "deep"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(stdout(&out), "deep\n", "{}", output_text(&out));
    state.assert_nothing_left();
}

#[test]
fn exit_code_is_the_containers() {
    need_run!("exit_code_is_the_containers");
    let state = TestState::new();
    let out = demo_run(&state, &["--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
}

#[test]
fn killed_by_sigkill_exits_137() {
    need_run!("killed_by_sigkill_exits_137");
    let state = TestState::new();
    // The command is PID 1 of the container's PID namespace, which no process inside
    // the namespace can SIGKILL (`kill -9 $$` is ignored, with runc too). The kernel
    // can: at the hard CPU-time limit it sends SIGKILL, whatever the PID.
    let out = demo_run(
        &state,
        &["--", "sh", "-c", "ulimit -t 1; while :; do :; done"],
    );
    assert_eq!(out.status.code(), Some(137), "{}", output_text(&out));
}

#[test]
fn stdin_is_echoed_back_byte_exact() {
    need_run!("stdin_is_echoed_back_byte_exact");
    let state = TestState::new();
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 7)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let out = run_in(
        state.hull(),
        &refs(&demo(&["-i", "--", "cat"])),
        Some(&data),
    );
    state.assert_nothing_left();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdin came back changed");
}

#[test]
fn sixty_four_mib_of_output_arrive_byte_exact() {
    need_run!("sixty_four_mib_of_output_arrive_byte_exact");
    let state = TestState::new();
    const N: usize = 64 << 20;
    let out = demo_run(
        &state,
        &["--", "sh", "-c", "yes abcdefghijklmno | head -c 67108864"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let expected: Vec<u8> = b"abcdefghijklmno\n"
        .iter()
        .copied()
        .cycle()
        .take(N)
        .collect();
    assert_eq!(out.stdout.len(), N);
    assert_eq!(
        format!("{:x}", Sha256::digest(&out.stdout)),
        format!("{:x}", Sha256::digest(&expected))
    );
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    need_run!("stdout_and_stderr_are_kept_apart");
    let state = TestState::new();
    let out = demo_run(
        &state,
        &[
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; echo more-out",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(stdout(&out), "to-out\nmore-out\n");
    assert!(
        stderr(&out).contains("to-err\n") && !stdout(&out).contains("to-err"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn nothing_is_lost_when_the_process_exits_right_after_writing() {
    need_run!("nothing_is_lost_when_the_process_exits_right_after_writing");
    let state = TestState::new();
    let out = demo_run(
        &state,
        &[
            "--",
            "sh",
            "-c",
            "head -c 1000000 /dev/zero; echo tail >&2; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 1_000_000);
    assert!(stderr(&out).ends_with("tail\n"), "{}", stderr(&out));
}

#[test]
fn tty_mode_gives_the_container_a_terminal() {
    need_run!("tty_mode_gives_the_container_a_terminal");
    let state = TestState::new();
    let out = demo_run(&state, &["-t", "--", "sh", "-c", "tty; echo TERM=$TERM"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let text = stdout(&out);
    assert!(
        text.contains("/dev/pts/") && text.contains("TERM=xterm"),
        "{text}"
    );
}

// ---------------------------------------------------------------- signals

#[test]
fn sigterm_to_hull_is_forwarded_and_everything_torn_down() {
    need_run!("sigterm_to_hull_is_forwarded_and_everything_torn_down");
    let state = TestState::new();
    let mut hull = state
        .hull()
        .arg("run")
        .args(refs(&demo(&[
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ])))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hull run");
    let mut out = hull.stdout.take().expect("stdout");
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut first).expect("ready line");
    assert_eq!(&first, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hull.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("rest");
    let status = hull.wait().expect("wait");
    assert_eq!(status.code(), Some(42), "{rest}");
    assert!(rest.contains("got-term"), "{rest}");
    state.assert_nothing_left();
}

#[test]
fn sigint_during_boot_leaves_nothing_host_side() {
    // host side: volumes are mounted before the VM boots and must go with it.
    need_run!("sigint_during_boot_leaves_nothing_host_side");
    let state = TestState::new();
    let vol = tempfile::tempdir().expect("vol");
    let v = format!("{}:/data", vol.path().display());
    let hull = state
        .hull()
        .arg("run")
        .args(refs(&demo(&["-v", &v, "--", "true"])))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hull run");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !state
        .processes()
        .iter()
        .any(|(_, c)| c.contains("qemu-system"))
    {
        if std::time::Instant::now() > deadline {
            let out = hull.wait_with_output().expect("hull");
            panic!("QEMU never started: {}", output_text(&out));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        state.mounts().len(),
        1,
        "the volume is mounted while the VM runs"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hull.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal");
    let out = hull.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", output_text(&out));
    assert!(stderr(&out).contains("SIGINT"), "{}", output_text(&out));
    state.assert_nothing_left();
    assert!(vol.path().exists());
}

// ---------------------------------------------------------------- volumes

#[test]
fn volumes_rw_ro_and_nothing_else_of_the_host() {
    need_run!("volumes_rw_ro_and_nothing_else_of_the_host");
    let state = TestState::new();
    let top = tempfile::tempdir().expect("tmp");
    let rw = top.path().join("rw");
    let ro = top.path().join("ro");
    std::fs::create_dir(&rw).expect("rw");
    std::fs::create_dir(&ro).expect("ro");
    std::fs::write(ro.join("given"), b"from host\n").expect("given");
    // A marker next to the volumes, never shared: the guest must not find it.
    std::fs::write(top.path().join("hull-secret-marker-7f3a"), b"secret").expect("marker");
    let script =
        "echo written > /rw/out; cat /ro/given; if echo x > /ro/nope; then echo RO-WRITABLE; fi; \
                  find / -name 'hull-secret-marker-*' 2>/dev/null; echo done";
    let out = demo_run(
        &state,
        &[
            "-v",
            &format!("{}:/rw", rw.display()),
            "-v",
            &format!("{}:/ro:ro", ro.display()),
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    let text = stdout(&out);
    assert_eq!(
        std::fs::read(rw.join("out")).ok().as_deref(),
        Some(&b"written\n"[..]),
        "{}",
        output_text(&out)
    );
    assert!(text.contains("from host"), "{}", output_text(&out));
    assert!(
        !text.contains("RO-WRITABLE") && !ro.join("nope").exists(),
        "{}",
        output_text(&out)
    );
    assert!(
        !text.contains("hull-secret-marker"),
        "the guest saw a host file: {}",
        output_text(&out)
    );
    assert!(text.ends_with("done\n"), "{}", output_text(&out));
    assert!(top.path().join("hull-secret-marker-7f3a").exists());
}

#[test]
fn volume_mounts_are_undone_when_the_run_fails() {
    // host side: whatever the agent answers, the share's bind mounts go.
    need_run!("volume_mounts_are_undone_when_the_run_fails");
    let state = TestState::new();
    let vol = tempfile::tempdir().expect("vol");
    std::fs::write(vol.path().join("keep"), b"user data").expect("keep");
    let v = format!("{}:/data:ro", vol.path().display());
    // A run that fails after the volume was mounted: in the container (exit 1), or
    // today already at CreateSandbox.
    let out = run(
        &state,
        &refs(&demo(&["-v", &v, "--", "sh", "-c", "exit 1"])),
    );
    assert_ne!(out.status.code(), Some(0), "{}", output_text(&out));
    state.assert_nothing_left();
    assert_eq!(
        std::fs::read(vol.path().join("keep")).expect("user data survives"),
        b"user data"
    );
}

// ---------------------------------------------------------------- bad input

fn assert_clean_failure(state: &TestState, out: &Output, must_contain: &str) {
    assert_eq!(out.status.code(), Some(125), "{}", output_text(out));
    assert!(
        stderr(out).contains(must_contain),
        "error should name {must_contain:?}: {}",
        output_text(out)
    );
    state.assert_nothing_left();
}

#[test]
fn missing_image_dir_is_named() {
    // host side
    need_run!("missing_image_dir_is_named");
    let state = TestState::new();
    let out = run(
        &state,
        &["--image", "/nonexistent/hull-image", "--", "true"],
    );
    assert_clean_failure(&state, &out, "/nonexistent/hull-image");
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success());
}

#[test]
fn image_with_a_missing_layer_blob_names_the_digest() {
    // host side
    need_run!("image_with_a_missing_layer_blob_names_the_digest");
    let state = TestState::new();
    let tmp = tempfile::tempdir().expect("tmp");
    let img = tmp.path().join("img");
    copy_dir(&demo_image(), &img);
    // The largest blob is the layer.
    let blobs = img.join("blobs/sha256");
    let layer = std::fs::read_dir(&blobs)
        .expect("blobs")
        .filter_map(|e| e.ok())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a blob");
    let digest = format!("sha256:{}", layer.file_name().to_string_lossy());
    std::fs::remove_file(layer.path()).expect("rm layer");
    let out = run(
        &state,
        &["--image", &img.display().to_string(), "--", "true"],
    );
    assert_clean_failure(&state, &out, &digest);
}

#[test]
fn no_process_args_is_an_error() {
    // host side
    need_run!("no_process_args_is_an_error");
    let state = TestState::new();
    let rootfs = tempfile::tempdir().expect("rootfs");
    let out = run(&state, &["--rootfs", &rootfs.path().display().to_string()]);
    assert_clean_failure(&state, &out, "no command");
}

#[test]
fn bad_memory_value_is_named() {
    // host side
    need_run!("bad_memory_value_is_named");
    let state = TestState::new();
    let out = run(&state, &refs(&demo(&["--memory", "lots", "--", "true"])));
    assert_clean_failure(&state, &out, "--memory");
    assert!(stderr(&out).contains("lots"), "{}", output_text(&out));
}

#[test]
fn a_command_not_in_the_image_is_reported_as_not_found() {
    // host side: the command is looked up in the rootfs before the VM boots.
    need_run!("a_command_not_in_the_image_is_reported_as_not_found");
    let state = TestState::new();
    for cmd in ["/bin/no-such-command", "no-such-command"] {
        let out = run(&state, &refs(&demo(&["--", cmd])));
        assert_eq!(out.status.code(), Some(127), "{}", output_text(&out));
        let err = stderr(&out);
        assert!(
            err.contains(cmd) && err.contains("not found"),
            "{}",
            output_text(&out)
        );
        state.assert_nothing_left();
    }
}

#[test]
fn hull_image_path_names_the_demo_image() {
    // host side
    let state = TestState::new();
    let out = state
        .hull()
        .args(["image", "path", "demo"])
        .output()
        .expect("hull image path");
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(stdout(&out).trim(), demo_image().display().to_string());
}

// ---------------------------------------------------------------- terminal

/// Regression: `stty size` in a `-t` container failed ("No child processes", busybox's
/// report of a 0x0 window with a stale errno): the pty started at 0x0 and hull sent its
/// size only once the command ran. Now the size travels in the spec (`consoleSize`)
/// and the agent sets it before the command starts; without a terminal of hull's own
/// the agent gives 24x80.
#[test]
fn tty_has_its_size_before_the_command_runs() {
    need_run!("tty_has_its_size_before_the_command_runs");
    if hull_runtime::host::find_binary(Path::new("script")).is_none() {
        panic!("`script` (util-linux) is needed to give hull a terminal");
    }
    let state = TestState::new();
    let out = demo_run(&state, &["-t", "--", "stty", "size"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(stdout(&out).trim(), "24 80", "{}", output_text(&out));

    let cmdline = format!(
        "stty rows 33 cols 111; HULL_STATE_DIR={} {} run -t --image demo -- stty size",
        state.path().display(),
        hull_bin().display()
    );
    let out = in_terminal(&cmdline, 120);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(!out.stdout.contains(&0), "{:?}", out.stdout);
    assert_eq!(stdout(&out).trim(), "33 111", "{:?}", out.stdout);
    state.assert_nothing_left();
}
