//! `hull run` end to end, inside the container: isolation (PID 1, hostname, masked
//! paths, read-only rootfs, capabilities, seccomp, user, env, cwd) and resources
//! (memory/OOM, pids, cpu quota). All need the agent's container support.

use hull_tests::run_helpers::*;
use hull_tests::*;

// ---------------------------------------------------------------- isolation

#[test]
fn pid_1_is_the_command_and_hostname_is_set() {
    need_run!("pid_1_is_the_command_and_hostname_is_set");
    let state = TestState::new();
    let out = demo_run(
        &state,
        &[
            "--hostname",
            "hull-box",
            "--",
            "sh",
            "-c",
            "echo $$; hostname",
        ],
    );
    assert_eq!(stdout(&out), "1\nhull-box\n", "{}", output_text(&out));
}

#[test]
fn proc_kcore_is_masked_and_rootfs_read_only_when_asked() {
    need_run!("proc_kcore_is_masked_and_rootfs_read_only_when_asked");
    let state = TestState::new();
    let out = demo_run(&state, &["--", "sh", "-c", "wc -c < /proc/kcore"]);
    assert_eq!(stdout(&out).trim(), "0", "{}", output_text(&out));
    let out = demo_run(&state, &["--read-only", "--", "touch", "/newfile"]);
    assert_ne!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        output_text(&out)
    );
    let out = demo_run(&state, &["--", "touch", "/newfile"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "writable without --read-only: {}",
        output_text(&out)
    );
}

#[test]
fn capabilities_outside_the_default_set_are_denied() {
    need_run!("capabilities_outside_the_default_set_are_denied");
    let state = TestState::new();
    // CAP_SYS_ADMIN is not in containerd's default set.
    let out = demo_run(&state, &["--", "mount", "-t", "tmpfs", "t", "/mnt"]);
    assert_ne!(out.status.code(), Some(0), "{}", output_text(&out));
    // A non-root user has no capabilities at all: chown is denied.
    let out = demo_run(
        &state,
        &[
            "--user",
            "1000:1000",
            "--",
            "sh",
            "-c",
            "touch /tmp/f && chown 0:0 /tmp/f",
        ],
    );
    assert_ne!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn the_default_seccomp_profile_denies_with_eperm() {
    need_run!("the_default_seccomp_profile_denies_with_eperm");
    let state = TestState::new();
    // unshare(CLONE_NEWUSER) needs no capability; only seccomp stops it.
    let out = demo_run(&state, &["--", "unshare", "-U", "true"]);
    assert_ne!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn user_env_and_cwd_are_applied() {
    need_run!("user_env_and_cwd_are_applied");
    let state = TestState::new();
    let out = demo_run(
        &state,
        &[
            "--user",
            "1000:1001",
            "--env",
            "GREETING=hi there",
            "--workdir",
            "/tmp",
            "--",
            "sh",
            "-c",
            "id; echo \"$GREETING\"; pwd",
        ],
    );
    let text = stdout(&out);
    assert!(
        text.contains("uid=1000") && text.contains("gid=1001"),
        "{}",
        output_text(&out)
    );
    assert!(text.contains("hi there\n/tmp\n"), "{}", output_text(&out));
}

// ---------------------------------------------------------------- resources

#[test]
fn a_memory_hog_is_oom_killed_with_137() {
    need_run!("a_memory_hog_is_oom_killed_with_137");
    let state = TestState::new();
    // tail keeps a whole newline-free stream in memory.
    let out = demo_run(
        &state,
        &[
            "--memory",
            "32M",
            "--",
            "sh",
            "-c",
            "head -c 200000000 /dev/zero | tail",
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{}", output_text(&out));
    assert!(stderr(&out).contains("OOM"), "{}", output_text(&out));
}

#[test]
fn pids_limit_is_enforced() {
    need_run!("pids_limit_is_enforced");
    let state = TestState::new();
    let out = demo_run(
        &state,
        &[
            "--pids-limit",
            "8",
            "--",
            "sh",
            "-c",
            "for i in $(seq 20); do sleep 2 & done; wait",
        ],
    );
    assert!(
        stderr(&out).contains("can't fork")
            || stderr(&out).contains("Resource temporarily unavailable"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn cpu_quota_is_in_the_containers_cgroup() {
    need_run!("cpu_quota_is_in_the_containers_cgroup");
    let state = TestState::new();
    let out = demo_run(
        &state,
        &[
            "--cpus",
            "0.5",
            "--memory",
            "64M",
            "--",
            "sh",
            "-c",
            "cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max",
        ],
    );
    assert_eq!(
        stdout(&out),
        format!("50000 100000\n{}\n", 64 << 20),
        "{}",
        output_text(&out)
    );
}
