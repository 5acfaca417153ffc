//! The performance suite (`scripts/bench suite`, scripts/bench_suite/) runs once in its
//! tiny mode (one repetition, two pods, small I/O) only to prove it still works end to
//! end: every case of hull's produced figures, the JSON, table and chart were written,
//! and nothing was left behind. No figure is compared with a time or a target.

use std::path::{Path, PathBuf};
use std::process::Command;

use hull_tests::{output_text, processes_mentioning, target_bin};
use serde_json::Value;

fn suite_script() -> PathBuf {
    hull_tests::repo_root().join("scripts/bench_suite/main.py")
}

fn prerequisites() -> Result<(), String> {
    hull_tests::containerd::prerequisites()?;
    if hull_runtime::host::find_binary(Path::new("python3")).is_none() {
        return Err("python3 is missing (apt-get install python3)".into());
    }
    if !hull_tests::floor_initrd().exists() {
        return Err(format!(
            "{} is missing (guest-image/build)",
            hull_tests::floor_initrd().display()
        ));
    }
    Ok(())
}

/// `v[path...]` as a number, or a panic naming the path and the JSON.
fn num(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {v:#}"))
}

#[test]
fn bench_suite_tiny_mode_runs_every_case_and_writes_json_table_and_chart() {
    let test = "bench_suite_tiny_mode_runs_every_case_and_writes_json_table_and_chart";
    if !hull_tests::require(test, prerequisites()) {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("hull-bench-test-")
        .tempdir_in("/tmp")
        .expect("work dir");
    let out_dir = work.path().join("out");
    let bin_dir = target_bin("hull").parent().expect("bin dir").to_path_buf();
    let out = Command::new("python3")
        .arg(suite_script())
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--image-layout")
        .arg(hull_tests::demo_image())
        .arg("--out")
        .arg(&out_dir)
        .arg("--work-parent")
        .arg(work.path())
        .arg("--tiny")
        .env("HULL_CACHE_DIR", hull_runtime::config::default_cache_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the bench suite");
    assert!(out.status.success(), "{}", output_text(&out));

    let json = std::fs::read_to_string(out_dir.join("suite.json")).expect("suite.json");
    let r: Value = serde_json::from_str(&json).expect("suite.json is JSON");
    assert_eq!(r["tiny"], Value::Bool(true));
    let hull = &r["runtimes"]["hull"];
    // One repetition of each series, two pods in the density case.
    for (case, key) in [
        ("start", "ctr_run_true_s"),
        ("start", "echo_first_output_s"),
        ("pod", "exec_true_s"),
        ("pod", "io_write_s"),
        ("pod", "io_read_s"),
        ("pod", "io_small_files_s"),
        ("pod", "teardown_s"),
    ] {
        assert_eq!(num(hull, &[case, key, "n"]), 1.0, "{case}.{key}: {hull:#}");
        assert!(
            num(hull, &[case, key, "median"]) > 0.0,
            "{case}.{key}: {hull:#}"
        );
    }
    assert_eq!(num(hull, &["density", "start_s", "n"]), 2.0, "{hull:#}");
    assert_eq!(num(hull, &["density", "teardown_s", "n"]), 2.0, "{hull:#}");
    // The start's phases come from the shim's log; each was found.
    let phases = hull["start"]["phases_s"]
        .as_object()
        .expect("hull start phases");
    for p in [
        "shim started",
        "VM processes",
        "agent connected",
        "container created",
        "process started",
    ] {
        assert!(phases.contains_key(p), "phase {p} missing: {phases:?}");
    }
    // Memory: the pod's host processes (shim, QEMU, helpers) and the guest's own use.
    let mem = hull["pod"]["memory_mib"]
        .as_object()
        .expect("hull pod memory");
    assert!(
        mem.keys().any(|k| k.starts_with("containerd-shim-hull")),
        "{mem:?}"
    );
    assert!(mem.keys().any(|k| k.starts_with("qemu-system")), "{mem:?}");
    assert!(num(hull, &["pod", "host_pss_mib"]) > 0.0);
    assert!(num(hull, &["pod", "guest_in_use_mib"]) > 0.0);
    assert!(
        num(&r, &["floor", "floor_total_s", "median"]) > 0.0,
        "{:#}",
        r["floor"]
    );
    assert!(
        num(&r, &["agent_binary", "bytes"]) > 0.0,
        "{:#}",
        r["agent_binary"]
    );
    // runc is the baseline: it runs here; every other peer ran or says why not.
    assert!(
        num(
            &r["runtimes"]["runc"],
            &["start", "ctr_run_true_s", "median"]
        ) > 0.0
    );
    for peer in ["youki", "crun", "runsc"] {
        let p = &r["runtimes"][peer];
        assert!(
            p["start"].is_object() || p["unavailable"].is_string(),
            "{peer}: {p:#}"
        );
    }

    let table = std::fs::read_to_string(out_dir.join("suite.txt")).expect("suite.txt");
    assert!(
        table.contains("hull/runc") && table.contains("hull/floor"),
        "{table}"
    );
    // No case of hull's or of the baseline's failed (the table lists failures as `RT CASE: failed: ...`).
    assert!(
        !table.lines().any(|l| (l.starts_with("hull ") || l.starts_with("runc ")) && l.contains(": failed: ")),
        "{table}"
    );
    let svg = std::fs::read_to_string(out_dir.join("suite.svg")).expect("suite.svg");
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert!(
        svg.contains("agent connected") && svg.contains("qemu-system"),
        "{svg}"
    );

    // Nothing left: no process mentions the suite's dirs, no mount under them, and its
    // containerd's and the floor's temp dirs are gone.
    let w = work.path().to_string_lossy().into_owned();
    assert!(
        processes_mentioning(&w).is_empty(),
        "{:?}",
        processes_mentioning(&w)
    );
    assert!(hull_runtime::sandbox::share::mounts_under(work.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(work.path())
        .expect("work dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != "out")
        .collect();
    assert!(left.is_empty(), "left behind in {w}: {left:?}");
    // Nor a cgroup named after its containerd namespace (runc's and the shim's pod
    // cgroups are `/<namespace>/<id>`), in any hierarchy.
    let ns = r["namespace"]
        .as_str()
        .expect("the suite's namespace in suite.json");
    assert!(ns.starts_with("hull-bench-"), "{ns}");
    let root = Path::new("/sys/fs/cgroup");
    let mut cgroups: Vec<_> = std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join(ns))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    if root.join(ns).exists() {
        cgroups.push(root.join(ns));
    }
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
}
