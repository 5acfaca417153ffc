//! hull on a real SVM `/dev/kvm`, in the nested bed (`scripts/nested`): an L1 Linux under
//! QEMU TCG with an emulated AMD SVM CPU loads kvm_amd, and hull inside it boots the real
//! guest (L2) on hull-vmm and on QEMU + KVM. The development and CI machines' own
//! `/dev/kvm` is PVM and boots no Linux, so this is the only place hull-vmm runs Linux in
//! a test.
//!
//! One L1 boot per test: the checks run in a bash script inside L1
//! (tests/nested/l1-checks.sh) that prints `key=value` lines, asserted here. L2 is about
//! 10x slower than a TCG guest: no timed assertions, generous deadlines.
//!
//! The bed needs the built binaries (hull, hull-vmm), the guest and demo images, QEMU,
//! busybox-static and Debian's kernel package (`scripts/nested build` downloads it once).
//! When this host's QEMU offers no SVM the bed says so (exit 97) and the tests skip, or
//! fail under `HULL_REQUIRE_E2E=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hull_tests::*;

/// `scripts/nested run`: the bed cannot run here (no SVM `/dev/kvm` in L1).
const EXIT_NO_SVM: i32 = 97;
/// `scripts/nested run`: L1 failed (no report within its deadline, or no boot).
const EXIT_L1_FAILED: i32 = 98;

/// Deadline of the whole L1 run (QEMU is killed after it). L2 boots take 10-20 s each.
const L1_TIMEOUT_SECS: u32 = 900;

fn nested_script() -> PathBuf {
    repo_root().join("scripts/nested")
}

/// What the bed needs on the host, or why it cannot run: `hull run`'s parts (QEMU,
/// the helpers, the guest and demo images), the built hull-vmm, and an L1 (built here
/// when absent: Debian's kernel package is downloaded once).
fn bed_prerequisites() -> Result<(), String> {
    run_prerequisites()?;
    for b in ["hull", "hull-vmm"] {
        if !target_bin(b).exists() {
            return Err(format!(
                "{} is missing (cargo build --release --workspace; scripts/test does)",
                target_bin(b).display()
            ));
        }
    }
    let out = Command::new(nested_script())
        .arg("build")
        .output()
        .map_err(|e| format!("cannot run scripts/nested: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/nested build failed: {}",
            output_text(&out)
        ));
    }
    Ok(())
}

/// `scripts/nested run ARGS -- CMD`, with `TMPDIR` set to `tmp` (where its results
/// share lives), timed.
fn nested_run(tmp: &Path, env: &[(&str, &str)], args: &[&str], cmd: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let mut c = Command::new(nested_script());
    c.arg("run")
        .args(args)
        .arg("--")
        .args(cmd)
        .env("TMPDIR", tmp);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run scripts/nested");
    (out, start.elapsed())
}

/// True when the bed ran; when it says it cannot run here (no SVM), skips or fails
/// (`HULL_REQUIRE_E2E=1`) with its reason.
fn bed_ran(test: &str, out: &Output) -> bool {
    if out.status.code() == Some(EXIT_NO_SVM) {
        let why = String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        return require(test, Err(why));
    }
    true
}

/// QEMU processes of the bed whose results share is under `tmp`.
fn bed_processes(tmp: &Path) -> Vec<(i32, String)> {
    processes_mentioning(&tmp.to_string_lossy())
}

fn assert_bed_left_nothing(tmp: &Path) {
    let left: Vec<_> = std::fs::read_dir(tmp)
        .expect("tmp")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the bed left {left:?}");
    assert!(
        bed_processes(tmp).is_empty(),
        "the bed left processes {:?}",
        bed_processes(tmp)
    );
}

/// The bed itself: CMD's stdout, stderr and status come back through the results
/// share (not the console), L1 has an SVM `/dev/kvm`, the caller's cwd and the state
/// dir pass through, and nothing is left; a command that outlives `--timeout` gets the
/// bed's own status with QEMU killed.
#[test]
fn the_bed_returns_output_and_status_and_leaves_nothing() {
    let test = "the_bed_returns_output_and_status_and_leaves_nothing";
    if !require(test, bed_prerequisites()) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (out, took) = nested_run(
        tmp.path(),
        &[("HULL_STATE_DIR", "/nested-test/state")],
        &["--timeout", "300"],
        &[
            "bash",
            "-c",
            "echo \"out $PWD $HULL_STATE_DIR\"; echo err >&2; test -c /dev/kvm && grep -qw svm /proc/cpuinfo && exit 3",
        ],
    );
    eprintln!("{test}: L1 run took {took:.1?}");
    if !bed_ran(test, &out) {
        return;
    }
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("out {} /nested-test/state\n", cwd.display()),
        "{}",
        output_text(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "err\n",
        "{}",
        output_text(&out)
    );
    assert_bed_left_nothing(tmp.path());

    let (out, took) = nested_run(tmp.path(), &[], &["--timeout", "40"], &["sleep", "600"]);
    eprintln!("{test}: L1 run with a 40 s deadline took {took:.1?}");
    assert_eq!(
        out.status.code(),
        Some(EXIT_L1_FAILED),
        "{}",
        output_text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("within 40 s") && err.contains("QEMU killed"),
        "{}",
        output_text(&out)
    );
    assert_bed_left_nothing(tmp.path());
}

/// A QEMU CPU without SVM: the bed says it cannot run, with its own status, and why.
#[test]
fn the_bed_names_a_cpu_without_svm() {
    let test = "the_bed_names_a_cpu_without_svm";
    if !require(test, bed_prerequisites()) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (out, took) = nested_run(
        tmp.path(),
        &[("HULL_NESTED_CPU", NO_SVM_CPU)],
        &["--timeout", "300"],
        &["true"],
    );
    eprintln!("{test}: L1 run took {took:.1?}");
    assert_eq!(
        out.status.code(),
        Some(EXIT_NO_SVM),
        "{}",
        output_text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("nested: the bed cannot run here: L1's CPU has no 'svm' flag")
            && err.contains("L1 has no /dev/kvm"),
        "{}",
        output_text(&out)
    );
    assert_bed_left_nothing(tmp.path());
}

/// A QEMU `-cpu` model TCG runs without SVM (nor VMX).
const NO_SVM_CPU: &str = "qemu64,-svm";

/// The results of l1-checks.sh: `key=value` lines of its stdout.
fn results(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// hull on SVM KVM, one L1 boot: `hull check` finds hardware KVM and picks hull-vmm;
/// on hull-vmm a bare VM answers, and `hull run` gives output, exit codes, stdin, a
/// volume both ways and an OOM kill (137); the same smoke on QEMU + KVM; nothing left.
#[test]
fn hull_runs_real_guests_on_svm_kvm_in_the_nested_bed() {
    let test = "hull_runs_real_guests_on_svm_kvm_in_the_nested_bed";
    if !require(test, bed_prerequisites()) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let script = repo_root().join("tests/nested/l1-checks.sh");
    let bin_dir = hull_bin().parent().expect("bin dir").to_path_buf();
    let timeout = L1_TIMEOUT_SECS.to_string();
    let (out, took) = nested_run(
        tmp.path(),
        &[],
        &["--timeout", &timeout],
        &[
            "bash",
            &script.to_string_lossy(),
            &bin_dir.to_string_lossy(),
        ],
    );
    eprintln!("{test}: L1 run took {took:.1?}");
    if !bed_ran(test, &out) {
        return;
    }
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let r = results(&String::from_utf8_lossy(&out.stdout));
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("<missing>");

    let mut failures = Vec::new();
    let mut expect = |what: &str, ok: bool, key: &str| {
        if !ok {
            failures.push(format!("{what}: {key}={}", get(key)));
        }
    };
    let eq = |k: &str, v: &str| get(k) == v;

    expect(
        "the L1 script ran to its end",
        eq("finished", "1"),
        "finished",
    );
    expect("L1 runs kvm_amd", eq("kvm_module", "kvm_amd"), "kvm_module");
    expect(
        "the built hull is used",
        eq("hull", &target_bin("hull").to_string_lossy()),
        "hull",
    );
    expect("hull check runs", eq("check_rc", "0"), "check_rc");
    expect(
        "hull check reports hardware KVM",
        get("check_kvm").contains("OK") && get("check_kvm").contains("hardware (VMX/SVM)"),
        "check_kvm",
    );
    expect(
        "hull check finds the built hull-vmm",
        get("check_vmm_binary").contains(" OK ")
            && get("check_vmm_binary").contains(&*target_bin("hull-vmm").to_string_lossy()),
        "check_vmm_binary",
    );
    expect(
        "hull-vmm sees SVM",
        get("check_vmm_support").contains("hardware virtualization (Svm)"),
        "check_vmm_support",
    );
    expect(
        "hull check picks hull-vmm",
        get("check_backend").starts_with("hull-vmm (kvm)"),
        "check_backend",
    );
    for (p, name) in [("hull_vmm", "hull-vmm (kvm)"), ("qemu", "qemu (kvm)")] {
        let k = |s: &str| format!("{p}_{s}");
        expect("hull vm ping", eq(&k("ping_rc"), "0"), &k("ping_rc"));
        expect(
            "the agent answers",
            get(&k("ping_agent")).starts_with("agent: hull-agent")
                && get(&k("ping_agent")).ends_with("healthy"),
            &k("ping_agent"),
        );
        expect(
            "the VM ran on this backend",
            eq(&k("ping_on"), name),
            &k("ping_on"),
        );
        expect("hull run echo", eq(&k("echo_rc"), "0"), &k("echo_rc"));
        expect(
            "hull run echo's output",
            eq(&k("echo_out"), "hello from L2"),
            &k("echo_out"),
        );
        expect(
            "the container's exit code",
            eq(&k("exit7_rc"), "7"),
            &k("exit7_rc"),
        );
    }
    expect(
        "hull-vmm's virtio-blk: the root is an overlay on the scratch disk, write-through (no FLUSH offered), and reads back",
        eq("scratch_rc", "0") && eq("scratch_out", "overlay hull-scratch write through 50000"),
        "scratch_out",
    );
    expect("hull run -i", eq("stdin_rc", "0"), "stdin_rc");
    expect(
        "stdin comes back byte for byte",
        !get("stdin_sent").is_empty() && get("stdin_back") == get("stdin_sent"),
        "stdin_back",
    );
    expect("hull run -v", eq("volume_rc", "0"), "volume_rc");
    expect(
        "the container reads the volume",
        eq("volume_read", "from-l1"),
        "volume_read",
    );
    expect(
        "L1 sees the container's file",
        eq("volume_file", "from-container"),
        "volume_file",
    );
    expect(
        "an OOM-killed container exits 137",
        eq("oom_rc", "137"),
        "oom_rc",
    );
    expect(
        "hull says OOM",
        get("oom_said").parse::<u32>().is_ok_and(|n| n >= 1),
        "oom_said",
    );
    expect("hull run of 8 MiB", eq("big_rc", "0"), "big_rc");
    expect("8 MiB of output", eq("big_size", "8388608"), "big_size");
    expect(
        "8 MiB of output byte for byte",
        get("big_back") == get("big_sent") && get("big_sent").len() == 64,
        "big_back",
    );
    expect("the jailed container runs", eq("jail_up", "up"), "jail_up");
    expect(
        "hull-vmm runs as a sandbox uid",
        get("jail_uid").parse::<u32>().is_ok_and(|u| u > 0),
        "jail_uid",
    );
    expect(
        "hull-vmm has no capabilities",
        eq("jail_capeff", "0000000000000000"),
        "jail_capeff",
    );
    expect("hull-vmm has no_new_privs", eq("jail_nnp", "1"), "jail_nnp");
    expect(
        "hull-vmm has a vCPU and an event-loop thread",
        get("jail_threads").parse::<u32>().is_ok_and(|n| n >= 2),
        "jail_threads",
    );
    expect(
        "every vCPU and event-loop thread of hull-vmm is under seccomp",
        eq("jail_filtered", get("jail_threads")),
        "jail_filtered",
    );
    expect(
        "no sandbox left",
        eq("left_sandboxes", "0"),
        "left_sandboxes",
    );
    expect(
        "no VM process left",
        eq("left_processes", "0"),
        "left_processes",
    );

    assert!(
        failures.is_empty(),
        "in the nested bed:\n  {}\n{text}",
        failures.join("\n  ")
    );
    assert_bed_left_nothing(tmp.path());
}
