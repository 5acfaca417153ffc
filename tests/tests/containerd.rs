//! containerd-shim-hull-v2 under a real containerd (Debian's 1.6), driven with `ctr`:
//! output and exit codes of `ctr run`, stdin, a tty, the task API (exec, ps, metrics,
//! pause/resume, kill, delete), faults (QEMU or the shim killed) and bad input. Every
//! test starts its own containerd (see `hull_tests::containerd`) and checks that
//! nothing is left: no VM process or dir, no mount, no shim.

use std::time::Duration;

use hull_tests::containerd::{run_cmd, Containerd, IMAGE, RUNTIME};
use hull_tests::{output_text, processes_mentioning, wait_for};

macro_rules! need_containerd {
    ($name:expr) => {
        if !hull_tests::containerd::require_containerd($name) {
            return;
        }
    };
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ctr_run_prints_output_and_propagates_exit_codes() {
    need_containerd!("ctr_run_prints_output_and_propagates_exit_codes");
    let c = Containerd::start();
    let out = c.run_rm("echo1", &["echo", "hi"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(stdout(&out), "hi\n", "{}", output_text(&out));

    let out = c.run_rm("exit7", &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", output_text(&out));
    assert_eq!(stdout(&out), "out\n", "{}", output_text(&out));
    assert!(stderr(&out).contains("err\n"), "{}", output_text(&out));

    // stdin reaches the container and its end ends `cat`; all output arrives.
    let data: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let out = c.ctr_with_stdin(
        &["run", "--rm", "--runtime", RUNTIME, IMAGE, "cat1", "cat"],
        Some(data.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(stdout(&out), data, "stdin round trip");
    c.assert_nothing_left();
    // A shim that exits in order removes its socket (containerd may have deleted the
    // bundle, and with it the address file the shim crate goes by).
    for id in ["echo1", "exit7", "cat1"] {
        let socket = c.shim_socket(id);
        wait_for(
            "the shim's socket to be removed",
            Duration::from_secs(10),
            || (!socket.exists()).then_some(()),
        );
    }
}

#[test]
fn task_api_exec_ps_metrics_pause_resume_kill_delete() {
    need_containerd!("task_api_exec_ps_metrics_pause_resume_kill_delete");
    let c = Containerd::start();
    c.run_detached("d1", &["sleep", "1000"]);
    assert_eq!(c.task_status("d1").as_deref(), Some("RUNNING"));

    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "d1",
        "sh",
        "-c",
        "echo from exec; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", output_text(&out));
    assert_eq!(stdout(&out), "from exec\n", "{}", output_text(&out));

    let out = c.ctr(&["task", "ps", "d1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let pids: Vec<String> = stdout(&out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(
        pids,
        vec!["1".to_string()],
        "the container's init is PID 1: {}",
        output_text(&out)
    );

    let out = c.ctr(&["task", "metrics", "d1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = stdout(&out);
    assert!(
        text.contains("memory.usage")
            && text.contains("cpu.usage_usec")
            && text.contains("pids.current"),
        "{text}"
    );

    let out = c.ctr(&["task", "pause", "d1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(c.task_status("d1").as_deref(), Some("PAUSED"));
    let out = c.ctr(&["task", "resume", "d1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(c.task_status("d1").as_deref(), Some("RUNNING"));

    // `hull ps` lists the VM with its container; `hull logs` prints its console.
    let ps = c.state.hull().arg("ps").output().expect("hull ps");
    let text = stdout(&ps);
    let row = text
        .lines()
        .find(|l| l.contains(" d1"))
        .unwrap_or_else(|| panic!("hull ps: {}", output_text(&ps)));
    assert!(row.contains("qemu"), "{row}");
    let sandbox = row.split_whitespace().next().expect("id").to_string();
    let logs = c
        .state
        .hull()
        .args(["logs", &sandbox[..6]])
        .output()
        .expect("hull logs");
    assert!(
        logs.status.success() && stdout(&logs).contains("Linux version"),
        "{}",
        output_text(&logs)
    );

    // Running tasks cannot be deleted; killed ones can, with the signal's status.
    let out = c.ctr(&["task", "delete", "d1"]);
    assert!(
        !out.status.success(),
        "delete of a running task must fail: {}",
        output_text(&out)
    );
    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", "d1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for("the task to stop", Duration::from_secs(30), || {
        (c.task_status("d1").as_deref() == Some("STOPPED")).then_some(())
    });
    let out = c.ctr(&["task", "delete", "d1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("137"),
        "exit status 137 after SIGKILL: {}",
        output_text(&out)
    );
    let out = c.ctr(&["containers", "rm", "d1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    c.assert_nothing_left();
}

#[test]
fn ctr_run_with_a_tty() {
    need_containerd!("ctr_run_with_a_tty");
    if hull_runtime::host::find_binary(std::path::Path::new("script")).is_none() {
        panic!("`script` (util-linux) is needed to give ctr a terminal");
    }
    let c = Containerd::start();
    // `script` gives ctr a terminal; `-e` returns the command's exit code.
    let cmdline = format!(
        "ctr -a {} run -t --rm --runtime {RUNTIME} {IMAGE} tty1 sh -c 'tty; echo tty-ok; exit 6'",
        c.socket().display()
    );
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["-s", "KILL", "120", "script", "-qec", &cmdline, "/dev/null"]);
    let out = run_cmd(cmd, None);
    assert_eq!(out.status.code(), Some(6), "{}", output_text(&out));
    let text = stdout(&out);
    assert!(
        text.contains("/dev/pts/") && text.contains("tty-ok"),
        "{}",
        output_text(&out)
    );
    c.assert_nothing_left();
}

/// Regressions under `ctr run -t`: `stty size` failed ("No child processes": busybox
/// reports a 0x0 window with a stale errno) because the pty's size was never set before
/// the process ran; and a "^@" (an echoed NUL) came before the first output, which was
/// the terminal harness's doing (see `hull_tests::in_terminal`), not the shim's.
#[test]
fn ctr_run_tty_has_a_size_and_no_stray_bytes() {
    need_containerd!("ctr_run_tty_has_a_size_and_no_stray_bytes");
    if hull_runtime::host::find_binary(std::path::Path::new("script")).is_none() {
        panic!("`script` (util-linux) is needed to give ctr a terminal");
    }
    let c = Containerd::start();
    let cmdline = format!(
        "stty rows 33 cols 111; ctr -a {} run -t --rm --runtime {RUNTIME} {IMAGE} tty2 sh -c 'echo first; stty size; echo tty-done'",
        c.socket().display()
    );
    let out = hull_tests::in_terminal(&cmdline, 120);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        !out.stdout.contains(&0),
        "a NUL byte in the tty output: {:?}",
        out.stdout
    );
    let text = stdout(&out);
    assert!(
        text.starts_with("first"),
        "the first output bytes are the command's: {:?}",
        out.stdout
    );
    // ctr resizes once the task started: its 33x111, or the agent's 24x80 before that.
    let size = text.lines().nth(1).unwrap_or_default().trim();
    assert!(
        size == "33 111" || size == "24 80",
        "stty size: {:?}",
        out.stdout
    );
    assert!(text.contains("tty-done"), "{}", output_text(&out));
    c.assert_nothing_left();
}

/// `ctr run --log-uri`: `file://` appends both outputs to a file; `binary://` starts
/// a logging binary with containerd's contract (args from the query, CONTAINER_ID and
/// CONTAINER_NAMESPACE, fd 3 stdout, fd 4 stderr, fd 5 closed when ready), and it is
/// gone after the task.
#[test]
fn ctr_run_log_uris_file_and_binary() {
    need_containerd!("ctr_run_log_uris_file_and_binary");
    let c = Containerd::start();
    let dir = tempfile::tempdir().expect("tmp");

    let file = dir.path().join("logs/f1.log");
    let uri = format!("file://{}", file.display());
    let out = c.ctr(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        RUNTIME,
        IMAGE,
        "f1",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let text = std::fs::read_to_string(&file).expect("file:// log");
    assert!(
        text.contains("to-out\n") && text.contains("to-err\n"),
        "{text:?}"
    );

    let log = dir.path().join("b1.log");
    let logger = dir.path().join("logger.sh");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\necho \"args=$* id=$CONTAINER_ID ns=$CONTAINER_NAMESPACE\" > {log}\nexec 5>&-\nwhile read -r l <&3; do echo \"out: $l\"; done >> {log}\nwhile read -r l <&4; do echo \"err: $l\"; done >> {log}\necho end >> {log}\n",
            log = log.display()
        ),
    )
    .expect("logger script");
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let uri = format!("binary://{}?mode=test", logger.display());
    let out = c.ctr(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        RUNTIME,
        IMAGE,
        "b1",
        "sh",
        "-c",
        "echo line1; echo line2; echo oops >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let text = std::fs::read_to_string(&log).expect("binary:// log");
    assert_eq!(
        text,
        "args=mode test id=b1 ns=default\nout: line1\nout: line2\nerr: oops\nend\n",
        "{}",
        output_text(&out)
    );
    assert!(
        processes_mentioning(&logger.to_string_lossy()).is_empty(),
        "the logger outlived its task"
    );

    // A logger that cannot start fails the task's creation by name.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--log-uri",
        "binary:///nonexistent/hull-logger",
        "--runtime",
        RUNTIME,
        IMAGE,
        "b2",
        "true",
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("/nonexistent/hull-logger"),
        "{}",
        output_text(&out)
    );
    let _ = c.ctr(&["containers", "rm", "b2"]);
    c.assert_nothing_left();
}

/// `hull debug exec` reaches a containerd sandbox by its id from `hull ps`, when the
/// config the shim booted it with (`--runtime-config-path`) enables debug processes.
#[test]
fn hull_debug_exec_into_a_containerd_sandbox() {
    need_containerd!("hull_debug_exec_into_a_containerd_sandbox");
    let c = Containerd::start();
    c.run_debuggable("dbg1");
    let sandbox = c.sandbox_of("dbg1");
    let bb = "/run/hull/share/containers/dbg1/rootfs/bin/busybox";
    let out = c
        .state
        .hull()
        .args([
            "debug",
            "exec",
            &sandbox[..8],
            "--",
            bb,
            "cat",
            "/proc/1/cmdline",
        ])
        .output()
        .expect("hull debug exec");
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let pid1 = String::from_utf8_lossy(&out.stdout).replace('\0', " ");
    assert!(
        !pid1.trim().is_empty() && !pid1.starts_with("sleep"),
        "the guest's PID 1 is the agent: {pid1:?}"
    );
    let out = c
        .state
        .hull()
        .args(["debug", "exec", &sandbox, "--", bb, "sh", "-c", "exit 9"])
        .output()
        .expect("hull debug exec");
    assert_eq!(out.status.code(), Some(9), "{}", output_text(&out));

    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", "dbg1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for("the task to stop", Duration::from_secs(30), || {
        (c.task_status("dbg1").as_deref() == Some("STOPPED")).then_some(())
    });
    let out = c.ctr(&["task", "delete", "dbg1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = c.ctr(&["containers", "rm", "dbg1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    c.assert_nothing_left();
}

#[test]
fn qemu_killed_under_a_running_task_stops_it() {
    need_containerd!("qemu_killed_under_a_running_task_stops_it");
    let c = Containerd::start();
    c.run_detached("q1", &["sleep", "1000"]);
    let qemu = processes_mentioning(&c.state.path().to_string_lossy())
        .into_iter()
        .find(|(_, cmd)| cmd.contains("qemu-system"))
        .expect("the task's QEMU");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu.0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill QEMU");
    wait_for("the task to stop", Duration::from_secs(30), || {
        (c.task_status("q1").as_deref() == Some("STOPPED")).then_some(())
    });
    let out = c.ctr(&["task", "delete", "q1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("non-zero exit code"),
        "a non-zero status: {}",
        output_text(&out)
    );
    assert!(c.ctr(&["containers", "rm", "q1"]).status.success());
    c.assert_nothing_left();
}

#[test]
fn shim_killed_is_cleaned_up_by_delete() {
    need_containerd!("shim_killed_is_cleaned_up_by_delete");
    let c = Containerd::start();
    c.run_detached("s1", &["sleep", "1000"]);
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    let socket = c.shim_socket("s1");
    assert!(
        shims[0]
            .1
            .contains(&format!("-socket unix://{}", socket.display())),
        "{shims:?}"
    );
    assert!(
        socket.exists(),
        "{} exists while the shim runs",
        socket.display()
    );
    // containerd notices, runs `containerd-shim-hull-v2 delete`, and forgets the task.
    c.kill_shim("s1");
    // The dead shim's socket went with it (`delete` removes a socket nobody listens on).
    wait_for(
        "the dead shim's socket to be removed",
        Duration::from_secs(10),
        || (!socket.exists()).then_some(()),
    );
    assert!(c.ctr(&["containers", "rm", "s1"]).status.success());
    c.assert_nothing_left();
}

#[test]
fn bad_input_is_refused_by_name() {
    need_containerd!("bad_input_is_refused_by_name");
    let c = Containerd::start();
    let dir = tempfile::tempdir().expect("tmp");
    // An unknown key in hull's config (the runtime option names it).
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[guest]\nmemroy_mib = 512\n").expect("bad config");
    let bad_s = bad.to_str().expect("utf8");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        bad_s,
        IMAGE,
        "b1",
        "true",
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("memroy_mib") && stderr(&out).contains(bad_s),
        "{}",
        output_text(&out)
    );
    // A missing kernel.
    let nokernel = dir.path().join("nokernel.toml");
    std::fs::write(&nokernel, "[guest]\nkernel = \"/nonexistent/vmlinux\"\n").expect("config");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        nokernel.to_str().expect("utf8"),
        IMAGE,
        "b2",
        "true",
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("/nonexistent/vmlinux"),
        "{}",
        output_text(&out)
    );
    // An invalid spec: a relative working directory.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--cwd",
        "rel",
        IMAGE,
        "b3",
        "true",
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("process.cwd \"rel\""),
        "{}",
        output_text(&out)
    );
    for id in ["b1", "b2", "b3"] {
        let _ = c.ctr(&["containers", "rm", id]);
    }
    c.assert_nothing_left();
}

/// Runs `cat /proc/sys/kernel/random/boot_id` in task `id`: which guest kernel it is in.
fn boot_id(c: &Containerd, id: &str, exec: &str) -> String {
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        exec,
        id,
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    stdout(&out).trim().to_string()
}

#[test]
fn pod_containers_share_one_vm_and_pods_do_not() {
    need_containerd!("pod_containers_share_one_vm_and_pods_do_not");
    let c = Containerd::start();
    let sandbox = |pod: &str| {
        let out = c.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            &format!("io.kubernetes.cri.sandbox-id={pod}"),
            IMAGE,
            pod,
            "sleep",
            "1000",
        ]);
        assert!(out.status.success(), "{}", output_text(&out));
    };
    let member = |pod: &str, id: &str| {
        let out = c.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            &format!("io.kubernetes.cri.sandbox-id={pod}"),
            IMAGE,
            id,
            "sh",
            "-c",
            "echo member > /tmp/x; sleep 1000",
        ]);
        assert!(out.status.success(), "{}", output_text(&out));
    };
    sandbox("poda");
    member("poda", "poda-c1");
    member("poda", "poda-c2");
    sandbox("podb");
    assert_eq!(c.shims().len(), 2, "one shim per pod: {:?}", c.shims());
    let vms = hull_runtime::sandbox::share::mounts_under(c.state.path());
    assert!(!vms.is_empty());
    let (a0, a1, a2, b0) = (
        boot_id(&c, "poda", "b0"),
        boot_id(&c, "poda-c1", "b1"),
        boot_id(&c, "poda-c2", "b2"),
        boot_id(&c, "podb", "b3"),
    );
    assert_eq!(a0, a1, "containers of a pod run in its VM");
    assert_eq!(a0, a2, "containers of a pod run in its VM");
    assert_ne!(a0, b0, "two pods, two VMs");
    // Each container has its own rootfs in the VM.
    let out = c.ctr(&["task", "exec", "--exec-id", "r1", "poda", "cat", "/tmp/x"]);
    assert!(
        !out.status.success(),
        "the sandbox container must not see c1's files: {}",
        output_text(&out)
    );
    // A member goes, the pod stays; the sandbox goes last and takes the VM.
    for id in ["poda-c1", "poda-c2", "poda", "podb"] {
        c.kill_and_remove(id);
        if id == "poda-c1" {
            assert_eq!(
                boot_id(&c, "poda-c2", "b4"),
                a0,
                "the pod's VM outlives one member"
            );
        }
    }
    c.assert_nothing_left();
}

#[test]
fn pod_member_of_a_stopped_sandbox_is_refused_by_name() {
    need_containerd!("pod_member_of_a_stopped_sandbox_is_refused_by_name");
    let c = Containerd::start();
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=podx",
        IMAGE,
        "podx",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(c
        .ctr(&["task", "kill", "-s", "SIGKILL", "podx"])
        .status
        .success());
    wait_for("the sandbox to stop", Duration::from_secs(30), || {
        (c.task_status("podx").as_deref() == Some("STOPPED")).then_some(())
    });
    // A member that shares the pod's IPC namespace (as CRI's do, by a host path that
    // never reaches the guest) needs the sandbox container running.
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=podx",
        "--with-ns",
        "ipc:/proc/1/ns/ipc",
        IMAGE,
        "podx-c1",
        "sleep",
        "1000",
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("sandbox container podx is not running"),
        "{}",
        output_text(&out)
    );
    let out = c.ctr(&["task", "delete", "podx"]);
    assert!(out.status.success(), "{}", output_text(&out));
    for id in ["podx-c1", "podx"] {
        let _ = c.ctr(&["containers", "rm", id]);
    }
    c.assert_nothing_left();
}

/// A spec with a user namespace and an `RLIMIT_NPROC` hard limit far above the guest
/// kernel's default for its PID 1 (910 in a 256 MiB guest), and within the host's (what
/// containerd and runc inherit from this test): a process in a user namespace cannot
/// raise a hard limit, so the guest must start from a host-like one (unlimited). The same
/// spec through runc on the host is the reference.
#[test]
fn a_user_namespace_with_a_high_nproc_limit_runs_as_on_runc() {
    need_containerd!("a_user_namespace_with_a_high_nproc_limit_runs_as_on_runc");
    let (_, host_hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC).expect("rlimit");
    let limit = host_hard.min(100_000);
    if limit <= 4096 {
        eprintln!("SKIP a_user_namespace_with_a_high_nproc_limit_runs_as_on_runc: this host's RLIMIT_NPROC hard limit ({host_hard}) is too low to tell");
        return;
    }
    let c = Containerd::start();
    // The container's root (host uid 1000000 for runc) must reach its rootfs.
    std::fs::set_permissions(
        c.state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let mut spec = demo_spec(&c, "userns", "ulimit -Hu; ulimit -u; id -u");
    spec["process"]["rlimits"] = serde_json::json!([
        {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
        {"type": "RLIMIT_NPROC", "hard": limit, "soft": limit}
    ]);
    let ids = serde_json::json!([{"containerID": 0, "hostID": 1_000_000, "size": 65536}]);
    spec["linux"]["uidMappings"] = ids.clone();
    spec["linux"]["gidMappings"] = ids;
    spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(serde_json::json!({"type": "user"}));
    let path = write_spec(&c, "userns-nproc", &spec);
    let mut outputs = Vec::new();
    for (id, runtime) in [("un-runc", "io.containerd.runc.v2"), ("un-hull", RUNTIME)] {
        let out = run_config(&c, runtime, &path, id);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{runtime}: {}",
            output_text(&out)
        );
        outputs.push(stdout(&out));
    }
    assert_eq!(
        outputs[0],
        format!("{limit}\n{limit}\n0\n"),
        "runc's answer"
    );
    assert_eq!(outputs[1], outputs[0], "hull answers as runc");
    c.assert_nothing_left();
}

/// A privileged container (`ctr run --privileged`: every capability, every host device
/// in the spec) runs under the default policy, privileged over its pod's guest only: it
/// mounts, it has the guest's /dev/fuse, and of the host's devices it gets none the
/// guest lacks (the host's /dev/kvm is not there).
#[test]
fn a_privileged_container_runs_with_the_guests_devices_only() {
    need_containerd!("a_privileged_container_runs_with_the_guests_devices_only");
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIP a_privileged_container_runs_with_the_guests_devices_only: the check needs a host device the guest lacks (/dev/kvm)");
        return;
    }
    let c = Containerd::start();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--privileged",
        "--runtime",
        RUNTIME,
        IMAGE,
        "priv1",
        "sh",
        "-c",
        "mkdir -p /m && mount -t tmpfs none /m && echo mounted; test -c /dev/fuse && echo fuse; \
         test -e /dev/kvm || echo no-kvm; grep CapEff /proc/self/status",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("mounted\nfuse\nno-kvm\n"),
        "{}",
        output_text(&out)
    );
    let cap_eff = text
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    assert!(
        cap_eff & (1 << 21) != 0,
        "CAP_SYS_ADMIN is effective: {}",
        output_text(&out)
    );
    c.assert_nothing_left();
}

/// A privileged container builds a network of its own inside its pod's guest, as
/// Docker-in-Docker and CNI plugins do: a bridge (`brctl addbr`), a veth pair (`ip link
/// add type veth`) with one end in a new network namespace, a ping across them; and
/// the guest kernel has what such workloads also need: tun, conntrack.
#[test]
fn a_privileged_container_builds_bridges_and_veth_pairs_in_the_guest() {
    need_containerd!("a_privileged_container_builds_bridges_and_veth_pairs_in_the_guest");
    let c = Containerd::start();
    // busybox's `ip` names the veth peer itself (veth0); the namespace is a background
    // `unshare -n` whose PID the peer moves to.
    let script = "set -e
brctl addbr br0
ip link add v0 type veth
brctl addif br0 v0
ip addr add 10.99.0.1/24 dev br0
ip link set br0 up
ip link set v0 up
unshare -n sleep 60 &
ns=$!
sleep 1
ip link set veth0 netns $ns
nsenter -t $ns -n ip addr add 10.99.0.2/24 dev veth0
nsenter -t $ns -n ip link set veth0 up
ping -c 1 -W 10 10.99.0.2 >/dev/null && echo bridged
test -c /dev/net/tun && echo tun
test -e /proc/sys/net/netfilter/nf_conntrack_max && echo conntrack
kill $ns";
    let out = c.ctr(&[
        "run",
        "--rm",
        "--privileged",
        "--runtime",
        RUNTIME,
        IMAGE,
        "privnet1",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(
        stdout(&out),
        "bridged\ntun\nconntrack\n",
        "{}",
        output_text(&out)
    );
    c.assert_nothing_left();
}

/// `ctr oci spec` (containerd's default) with the demo image unpacked as its root (in
/// the test's state dir, `<name>-rootfs`), PATH set, `sh -c script` as its process and
/// the cgroup `/default/<name>`.
fn demo_spec(c: &Containerd, name: &str, script: &str) -> serde_json::Value {
    let image = hull_runtime::image::Image::open(&hull_runtime::image::ImageRef {
        dir: hull_tests::demo_image(),
        tag: None,
    })
    .expect("demo image");
    let rootfs = c.state.path().join(format!("{name}-rootfs"));
    image.unpack(&rootfs).expect("unpack");
    let out = c.ctr(&["oci", "spec"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let mut spec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ctr oci spec");
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": false});
    // `ctr oci spec` has no environment: PATH is this test's to give.
    spec["process"]["env"] = serde_json::json!(["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    // `ctr oci spec` says `/default`, the parent of every `ctr run` task's cgroup; a
    // task of its own gets `/default/<id>`, as `ctr run` gives it.
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/default/{name}"));
    spec
}

/// `ctr run --rm --runtime RUNTIME --config SPEC ID`.
fn run_config(
    c: &Containerd,
    runtime: &str,
    spec: impl AsRef<std::path::Path>,
    id: &str,
) -> std::process::Output {
    let spec = spec.as_ref().to_str().expect("utf8 path");
    c.ctr(&["run", "--rm", "--runtime", runtime, "--config", spec, id])
}

/// Writes `spec` as `<state dir>/<name>.json` (for `ctr run --config`).
fn write_spec(c: &Containerd, name: &str, spec: &serde_json::Value) -> std::path::PathBuf {
    let path = c.state.path().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(spec).expect("json")).expect("spec");
    path
}

/// The OCI hooks of a spec, every stage, run as runc runs them: the same spec through
/// runc and hull, each hook recording its stage, its argv[0] (`sh`, not the path: runc
/// runs startContainer's with the container's busybox, which dispatches on argv[0]),
/// its env and the state it
/// got on stdin into a log in a directory the container also binds (runc runs
/// startContainer inside the container). hull runs them all on the host, in the spec's
/// order with the spec's statuses; the records must match runc's in stage, id, bundle,
/// annotations, env and pid. Then a failing createRuntime hook fails `ctr run` on
/// both, hull naming the hook, nothing left.
#[test]
fn oci_hooks_run_at_each_stage_as_on_runc() {
    need_containerd!("oci_hooks_run_at_each_stage_as_on_runc");
    let c = Containerd::start();
    let logs = c.state.path().join("hook-logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let stages = [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ];
    let record = |log: &std::path::Path, stage: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c",
                format!("printf '%s %s %s ' \"$1\" \"$(tr '\\0' '\\n' < /proc/$$/cmdline | head -1)\" \"$MARK\" >> {0}; cat >> {0}; echo >> {0}", log.display()),
                "sh", stage],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "MARK=from-spec"],
            "timeout": 30
        })
    };
    let mut records = Vec::new();
    for (id, runtime) in [
        ("hooks-runc", "io.containerd.runc.v2"),
        ("hooks-hull", RUNTIME),
    ] {
        let log = logs.join(format!("{id}.log"));
        let mut spec = demo_spec(&c, id, "echo in-container");
        spec["annotations"] = serde_json::json!({"hull.test/hooks": "yes"});
        spec["mounts"]
            .as_array_mut()
            .expect("mounts")
            .push(serde_json::json!({
                "destination": logs, "type": "bind", "source": logs, "options": ["rbind", "rw"]
            }));
        let mut hooks = serde_json::Map::new();
        for stage in stages {
            hooks.insert(stage.into(), serde_json::json!([record(&log, stage)]));
        }
        spec["hooks"] = hooks.into();
        let path = write_spec(&c, id, &spec);
        let out = run_config(&c, runtime, &path, id);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{runtime}: {}",
            output_text(&out)
        );
        assert_eq!(
            stdout(&out),
            "in-container\n",
            "{runtime}: {}",
            output_text(&out)
        );
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // One line per hook: stage, argv[0], MARK, then the state JSON.
        let lines: Vec<String> = text
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let (stage, argv0, mark, json) = (
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                let state: serde_json::Value = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("{runtime}: {stage}'s state is not JSON ({e}): {l}"));
                let pid = state["pid"].as_u64().unwrap_or(0);
                let bundle = state["bundle"].as_str().unwrap_or("");
                format!(
                    "{stage} argv0={argv0} mark={mark} status={} id-ok={} bundle-ok={} annotation={} pid={}",
                    state["status"].as_str().unwrap_or("-"),
                    state["id"] == id,
                    bundle.ends_with(&format!("/{id}")),
                    state["annotations"]["hull.test/hooks"].as_str().unwrap_or("-"),
                    if pid > 0 { "yes" } else { "no" },
                )
            })
            .collect();
        records.push(lines);
    }
    let want: Vec<String> = [
        ("prestart", "creating", "yes"),
        ("createRuntime", "creating", "yes"),
        ("createContainer", "creating", "yes"),
        ("startContainer", "created", "yes"),
        ("poststart", "running", "yes"),
        ("poststop", "stopped", "no"),
    ]
    .iter()
    .map(|(stage, status, pid)| {
        format!("{stage} argv0=sh mark=from-spec status={status} id-ok=true bundle-ok=true annotation=yes pid={pid}")
    })
    .collect();
    // hull: the spec's order and statuses, exactly.
    assert_eq!(records[1], want, "hull's hooks");
    // runc (1.1): the same hooks with the same id, bundle, annotations, env and pid; but
    // its poststart (run by `runc start`) races the container's startContainer and
    // reports "created", and its createContainer runs in the container's mount
    // namespace (argv[0] is not readable there through the host's /proc). Compared
    // without those two fields, in sorted order.
    let comparable = |lines: &[String]| {
        let mut v: Vec<String> = lines
            .iter()
            .map(|l| {
                l.split(' ')
                    .filter(|f| !f.starts_with("status=") && !f.starts_with("argv0="))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        comparable(&records[1]),
        comparable(&records[0]),
        "hull's hooks as runc's (runc's: {:?})",
        records[0]
    );
    c.assert_nothing_left();

    // A failing createRuntime hook fails the run on both; hull names it.
    for (id, runtime) in [
        ("hookfail-runc", "io.containerd.runc.v2"),
        ("hookfail-hull", RUNTIME),
    ] {
        let mut spec = demo_spec(&c, id, "echo must-not-run");
        spec["hooks"] = serde_json::json!({"createRuntime": [{
            "path": "/bin/sh", "args": ["sh", "-c", "echo no device for you >&2; exit 3"]
        }]});
        let path = write_spec(&c, id, &spec);
        let out = run_config(&c, runtime, &path, id);
        assert_ne!(
            out.status.code(),
            Some(0),
            "{runtime}: {}",
            output_text(&out)
        );
        assert!(
            !stdout(&out).contains("must-not-run"),
            "{runtime}: {}",
            output_text(&out)
        );
        if runtime == RUNTIME {
            assert!(
                stderr(&out).contains(
                    "createRuntime hook /bin/sh failed (exit status 3): no device for you"
                ),
                "{}",
                output_text(&out)
            );
        }
        let _ = c.ctr(&["containers", "rm", id]);
    }
    c.assert_nothing_left();
}
