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
    for b in ["hull", "hull-vmm", "containerd-shim-hull-v2"] {
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

/// Runs `tests/nested/<script>` with the built binaries' dir in one L1 and returns its `key=value` results and its whole output; None when
/// the bed cannot run here (skipped, or failed under `HULL_REQUIRE_E2E=1`).
fn run_l1_script(
    test: &str,
    prerequisites: Result<(), String>,
    script: &str,
) -> Option<(BTreeMap<String, String>, String)> {
    if !require(test, prerequisites) {
        return None;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let script = repo_root().join("tests/nested").join(script);
    let bin_dir = hull_bin().parent().expect("bin dir").to_path_buf();
    let timeout = L1_TIMEOUT_SECS.to_string();
    let (out, took) = nested_run(
        tmp.path(),
        &[],
        // One L1 vCPU: with two (QEMU's multi-threaded TCG) L2 boots fail at random on
        // both backends (hull-vmm: triple faults; QEMU + KVM: hangs in early boot). An
        // L2 with two vCPUs runs on one L1 vCPU as on any overcommitted host.
        &["--timeout", &timeout],
        &[
            "bash",
            &script.to_string_lossy(),
            &bin_dir.to_string_lossy(),
        ],
    );
    eprintln!("{test}: L1 run took {took:.1?}");
    if !bed_ran(test, &out) {
        return None;
    }
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_bed_left_nothing(tmp.path());
    Some((results(&String::from_utf8_lossy(&out.stdout)), text))
}

/// The checks of one L1 script's results: each failed one is named with its key and
/// value, and all are reported together.
struct Checks<'r> {
    results: &'r BTreeMap<String, String>,
    failures: Vec<String>,
}

impl<'r> Checks<'r> {
    /// The checks of `results`, the first being that the script ran to its end.
    fn new(results: &'r BTreeMap<String, String>) -> Self {
        let mut c = Checks {
            results,
            failures: Vec::new(),
        };
        c.expect_eq("the L1 script ran to its end", "finished", "1");
        c
    }

    fn get(&self, key: &str) -> &'r str {
        self.results
            .get(key)
            .map(String::as_str)
            .unwrap_or("<missing>")
    }

    fn eq(&self, key: &str, value: &str) -> bool {
        self.get(key) == value
    }

    fn expect(&mut self, what: &str, ok: bool, key: &str) {
        if !ok {
            self.failures
                .push(format!("{what}: {key}={}", self.get(key)));
        }
    }

    /// `key` must be `value`.
    fn expect_eq(&mut self, what: &str, key: &str, value: &str) {
        let ok = self.eq(key, value);
        self.expect(what, ok, key);
    }

    fn assert_all(self, text: &str) {
        assert!(
            self.failures.is_empty(),
            "in the nested bed:\n  {}\n{text}",
            self.failures.join("\n  ")
        );
    }
}

/// hull on SVM KVM, one L1 boot: `hull check` finds hardware KVM and picks hull-vmm;
/// on hull-vmm a bare VM answers, and `hull run` gives output, exit codes, stdin, a
/// volume both ways, `--cpus 2`, the scratch disk on virtio-blk, an OOM kill (137) and
/// the jail; the same smoke on QEMU + KVM; nothing left.
#[test]
fn hull_runs_real_guests_on_svm_kvm_in_the_nested_bed() {
    let test = "hull_runs_real_guests_on_svm_kvm_in_the_nested_bed";
    let Some((r, text)) = run_l1_script(test, bed_prerequisites(), "l1-checks.sh") else {
        return;
    };
    let mut c = Checks::new(&r);
    c.expect_eq("L1 runs kvm_amd", "kvm_module", "kvm_amd");
    c.expect(
        "the built hull is used",
        c.eq("hull", &target_bin("hull").to_string_lossy()),
        "hull",
    );
    c.expect_eq("hull check runs", "check_rc", "0");
    c.expect(
        "hull check reports hardware KVM",
        c.get("check_kvm").contains("OK") && c.get("check_kvm").contains("hardware (VMX/SVM)"),
        "check_kvm",
    );
    c.expect(
        "hull check finds the built hull-vmm",
        c.get("check_vmm_binary").contains(" OK ")
            && c.get("check_vmm_binary")
                .contains(&*target_bin("hull-vmm").to_string_lossy()),
        "check_vmm_binary",
    );
    c.expect(
        "hull-vmm sees SVM",
        c.get("check_vmm_support")
            .contains("hardware virtualization (Svm)"),
        "check_vmm_support",
    );
    c.expect(
        "hull check picks hull-vmm",
        c.get("check_backend").starts_with("hull-vmm (kvm)"),
        "check_backend",
    );
    for (p, name) in [("hull_vmm", "hull-vmm (kvm)"), ("qemu", "qemu (kvm)")] {
        let k = |s: &str| format!("{p}_{s}");
        c.expect_eq("hull vm ping", &k("ping_rc"), "0");
        c.expect(
            "the agent answers",
            c.get(&k("ping_agent")).starts_with("agent: hull-agent")
                && c.get(&k("ping_agent")).ends_with("healthy"),
            &k("ping_agent"),
        );
        c.expect(
            "the VM ran on this backend",
            c.eq(&k("ping_on"), name),
            &k("ping_on"),
        );
        c.expect_eq("hull run echo", &k("echo_rc"), "0");
        c.expect_eq("hull run echo's output", &k("echo_out"), "hello from L2");
        c.expect_eq("the container's exit code", &k("exit7_rc"), "7");
    }
    c.expect_eq("hull run --cpus 2", "cpus_rc", "0");
    c.expect_eq(
        "--cpus 2: two vCPUs in the guest and the quota on the container's cgroup",
        "cpus_out",
        "2 200000 100000",
    );
    c.expect(
        "hull-vmm's virtio-blk: the root is an overlay on the scratch disk, write-through (no FLUSH offered), and reads back",
        c.eq("scratch_rc", "0") && c.eq("scratch_out", "overlay hull-scratch write through 50000"),
        "scratch_out",
    );
    c.expect_eq("hull run -i", "stdin_rc", "0");
    c.expect(
        "stdin comes back byte for byte",
        !c.get("stdin_sent").is_empty() && c.get("stdin_back") == c.get("stdin_sent"),
        "stdin_back",
    );
    c.expect_eq("hull run -v", "volume_rc", "0");
    c.expect_eq("the container reads the volume", "volume_read", "from-l1");
    c.expect_eq(
        "L1 sees the container's file",
        "volume_file",
        "from-container",
    );
    c.expect_eq("an OOM-killed container exits 137", "oom_rc", "137");
    c.expect(
        "hull says OOM",
        c.get("oom_said").parse::<u32>().is_ok_and(|n| n >= 1),
        "oom_said",
    );
    c.expect_eq("hull run of 8 MiB", "big_rc", "0");
    c.expect_eq("8 MiB of output", "big_size", "8388608");
    c.expect(
        "8 MiB of output byte for byte",
        c.get("big_back") == c.get("big_sent") && c.get("big_sent").len() == 64,
        "big_back",
    );
    c.expect_eq("the jailed container runs", "jail_up", "up");
    c.expect(
        "hull-vmm runs as a sandbox uid",
        c.get("jail_uid").parse::<u32>().is_ok_and(|u| u > 0),
        "jail_uid",
    );
    c.expect_eq(
        "hull-vmm has no capabilities",
        "jail_capeff",
        "0000000000000000",
    );
    c.expect_eq("hull-vmm has no_new_privs", "jail_nnp", "1");
    c.expect(
        "hull-vmm has a vCPU and an event-loop thread",
        c.get("jail_threads").parse::<u32>().is_ok_and(|n| n >= 2),
        "jail_threads",
    );
    c.expect(
        "every vCPU and event-loop thread of hull-vmm is under seccomp",
        c.eq("jail_filtered", c.get("jail_threads")),
        "jail_filtered",
    );
    c.expect_eq("no sandbox left", "left_sandboxes", "0");
    c.expect_eq("no VM process left", "left_processes", "0");

    c.assert_all(&text);
}

/// containerd in L1 (the host's binary) runs hull's shim on hull-vmm, on L1's cgroup v2
/// (the first v2 host hull runs on in CI), one L1 boot (tests/nested/l1-containerd.sh):
/// `ctr run` output and exit code; a pod in a CNI-style netns whose veth the shim wires
/// to a tap that hull-vmm's virtio-net carries, with HTTP both ways; exec; `--cpus 2`;
/// the VMM and the shim in the pod's cgroup, the guest's memory charged there; after
/// kill and delete no VM process, shim, sandbox, cgroup, tap or mount.
#[test]
fn containerd_runs_hull_pods_on_hull_vmm_with_cgroup_v2_and_virtio_net() {
    let test = "containerd_runs_hull_pods_on_hull_vmm_with_cgroup_v2_and_virtio_net";
    let prerequisites = bed_prerequisites().and_then(|()| containerd_prerequisites());
    let Some((r, text)) = run_l1_script(test, prerequisites, "l1-containerd.sh") else {
        return;
    };
    let mut c = Checks::new(&r);
    c.expect_eq("L1 is a cgroup v2 host", "cgroup_fs", "cgroup2fs");
    c.expect(
        "containerd finds the built shim",
        c.eq(
            "shim",
            &target_bin("containerd-shim-hull-v2").to_string_lossy(),
        ),
        "shim",
    );
    c.expect_eq("containerd runs in L1", "containerd_up", "1");
    c.expect_eq("the demo image is imported", "import_rc", "0");
    c.expect_eq("ctr run's exit code", "ctr_run_rc", "5");
    c.expect_eq("ctr run's output", "ctr_run_out", "hello from containerd");
    c.expect_eq("the pod starts", "pod_rc", "0");
    c.expect_eq(
        "the guest's eth0 has the pod's address",
        "guest_eth0",
        "10.77.0.2/24",
    );
    c.expect_eq("the shim wired one tap", "taps", "1");
    c.expect_eq(
        "L1 reaches the container's server over virtio-net",
        "net_l1_to_pod",
        "from-l2",
    );
    c.expect(
        "the container reaches L1's server over virtio-net",
        c.eq("net_pod_to_l1_rc", "0") && c.eq("net_pod_to_l1_out", "from-l1"),
        "net_pod_to_l1_out",
    );
    c.expect_eq("exec's exit code", "exec_rc", "3");
    c.expect_eq("exec's output", "exec_out", "exec out");
    c.expect_eq(
        "--cpus 2: two vCPUs and the quota in the guest",
        "cpus_out",
        "2 200000 100000",
    );
    c.expect_eq(
        "hull-vmm is in the pod's cgroup",
        "cgroup_vmm",
        "/default/p1",
    );
    c.expect_eq(
        "the shim is in the pod's cgroup",
        "cgroup_shim",
        "/default/p1",
    );
    // The VM is the limit + 128 MiB; the cgroup's limit is the VM plus the host overhead.
    let vm_mib = 256 + 128;
    let limit_mib = hull_runtime::cgroup::own_limit_bytes(
        vm_mib,
        hull_runtime::config::DEFAULT_HOST_OVERHEAD_MIB,
    ) >> 20;
    c.expect_eq(
        "the pod's cgroup limit is the VM + the host overhead",
        "cgroup_max_mib",
        &limit_mib.to_string(),
    );
    c.expect_eq("the guest touched 100 MB", "hog_out", "100000000");
    c.expect(
        "the guest's 100 MB are charged to the pod's cgroup",
        c.get("cgroup_grew_mib")
            .parse::<i64>()
            .is_ok_and(|m| m >= 64),
        "cgroup_grew_mib",
    );
    c.expect_eq("the task stops on SIGKILL", "stopped", "1");
    c.expect_eq("task delete", "delete_rc", "0");
    c.expect_eq("containers rm", "rm_rc", "0");
    for (what, key, value) in [
        ("no cgroup left", "left_cgroup", ""),
        ("no VM process left", "left_processes", "0"),
        ("no shim left", "left_shims", "0"),
        ("no tap left in the netns", "left_taps", "0"),
        ("no sandbox left", "left_sandboxes", "0"),
        ("no mount left", "left_mounts", "0"),
    ] {
        c.expect(what, c.eq(key, value), key);
    }
    c.assert_all(&text);
}

/// VM templates on hull-vmm with the real guest, one L1 boot (tests/nested/l1-template.sh):
/// `hull template build` snapshots a VM booted to "agent ready" (root-owned 0600 files);
/// two `hull run`s restore from it and run their container; each clone has its own
/// random bytes, boot_id and the current clock (SetIdentity); a truncated template is
/// rebuilt, not used; `rm --all` empties the store; nothing is left.
#[test]
fn templates_restore_real_guests_on_hull_vmm_in_the_nested_bed() {
    let test = "templates_restore_real_guests_on_hull_vmm_in_the_nested_bed";
    let Some((r, text)) = run_l1_script(test, bed_prerequisites(), "l1-template.sh") else {
        return;
    };
    let mut c = Checks::new(&r);
    c.expect_eq("hull template build", "build_rc", "0");
    c.expect(
        "the build prints the template's digest",
        c.get("build_digest").len() == 32
            && c.get("build_digest")
                .chars()
                .all(|ch| ch.is_ascii_hexdigit()),
        "build_digest",
    );
    c.expect_eq("hull template ls lists it", "ls_has_digest", "1");
    c.expect_eq(
        "the snapshot's files are root's, 0600",
        "template_files",
        "state.json 600 0 memory 600 0",
    );
    c.expect_eq("the record is root's, 0600", "template_record", "600 0");
    for n in ["1", "2"] {
        let k = |s: &str| format!("clone{n}_{s}");
        c.expect_eq("hull run from the template", &k("rc"), "0");
        c.expect_eq("the sandbox was restored", &k("restored"), "1");
        c.expect_eq(
            "the template compiled the default seccomp profile: the clone does not",
            &k("compiled"),
            "0",
        );
        c.expect(
            "the clone's clock is L1's",
            match (
                c.get(&k("time")).parse::<i64>(),
                c.get(&k("l1_time")).parse::<i64>(),
            ) {
                (Ok(guest), Ok(l1)) => (l1 - guest).abs() <= 120,
                _ => false,
            },
            &k("time"),
        );
        c.expect(
            "the clone read 16 random bytes",
            c.get(&k("random")).len() == 32,
            &k("random"),
        );
    }
    // Linux makes boot_id on its first read; nothing reads it before the template's
    // snapshot, so each clone makes its own, after SetIdentity's reseed.
    c.expect(
        "each clone has a boot_id of its own",
        c.get("clone1_boot_id").len() == 36
            && c.get("clone2_boot_id").len() == 36
            && !c.eq("clone2_boot_id", c.get("clone1_boot_id")),
        "clone2_boot_id",
    );
    c.expect(
        "each clone's random bytes are its own (entropy added, CRNG reseeded)",
        c.get("clone1_random") != c.get("clone2_random"),
        "clone2_random",
    );
    c.expect_eq("a run after the truncation", "truncated_rc", "0");
    c.expect_eq("its output", "truncated_out", "after the truncation");
    c.expect(
        "the truncated template is named and rebuilt",
        c.get("truncated_said").parse::<u32>().is_ok_and(|n| n >= 1),
        "truncated_said",
    );
    c.expect_eq(
        "the run restored from the rebuilt template",
        "truncated_restored",
        "1",
    );
    c.expect_eq("the rebuilt template is whole", "rebuilt_size_ok", "1");
    c.expect_eq("hull template rm --all", "rm_rc", "0");
    c.expect_eq("hull template ls: the header only", "ls_after_lines", "1");
    c.expect_eq("no template left", "templates_left", "0");
    c.expect_eq("no sandbox left", "left_sandboxes", "0");
    c.expect_eq("no VM process left", "left_processes", "0");
    c.assert_all(&text);
}

/// containerd and ctr on the host (L1 runs the host's binaries), or why not.
fn containerd_prerequisites() -> Result<(), String> {
    for tool in ["containerd", "ctr"] {
        if !Path::new("/usr/bin").join(tool).exists() {
            return Err(format!(
                "/usr/bin/{tool} is missing (apt-get install containerd)"
            ));
        }
    }
    Ok(())
}
