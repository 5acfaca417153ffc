//! Orphans: a shim SIGKILLed together with its containerd (so nothing runs `shim
//! delete`) leaves its sandbox; `hull ps` marks it `orphan` and `hull gc` removes its
//! processes, mounts, scratch disk, pod cgroup and state dir, while a live sandbox in
//! the same state dir (a `hull run`) is left alone and still answers. A second `hull
//! gc` has nothing to do.

use std::path::Path;
use std::time::Duration;

use hull_runtime::sandbox::leftovers::{self, Leftovers};
use hull_tests::containerd::Containerd;
use hull_tests::run_helpers::{demo, hull_in, start_ready};
use hull_tests::{output_text, pid_alive, processes_in_dir, processes_mentioning, wait_for};

const LIVE: &str = "gc-live";

fn hull(c: &Containerd, args: &[&str]) -> std::process::Output {
    let (sub, rest) = args.split_first().expect("a subcommand");
    hull_in(c.state.hull(), sub, rest, None)
}

/// The `hull ps` row of sandbox `id`.
fn ps_row(c: &Containerd, id: &str) -> String {
    let out = hull(c, &["ps"]);
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("hull ps does not list {id}: {}", output_text(&out)))
        .to_string()
}

/// Processes naming `dir` in their command line or running in it.
fn processes_of(dir: &Path) -> Vec<(i32, String)> {
    let mut found = processes_mentioning(&format!("{}/", dir.display()));
    found.extend(processes_in_dir(dir));
    found
}

#[test]
fn gc_removes_what_a_killed_shim_and_containerd_left_and_spares_a_live_sandbox() {
    if !hull_tests::containerd::require_containerd(
        "gc_removes_what_a_killed_shim_and_containerd_left_and_spares_a_live_sandbox",
    ) {
        return;
    }
    let mut c = Containerd::start();
    // The live sandbox: a `hull run` in the same state dir.
    let (mut live, _live_out) = start_ready(
        c.state.hull(),
        &demo(&[
            "--name",
            LIVE,
            "--",
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo ready; while :; do sleep 0.1; done",
        ]),
    );
    c.run_detached("gc1", &["sleep", "1000"]);
    let sandbox = c.sandbox_of("gc1");
    let dir = c.state.path().join("vms").join(&sandbox);
    let record = Leftovers::read(&dir.join(leftovers::FILE))
        .expect("the sandbox's record")
        .expect("a record in the state dir");
    assert!(!record.pids.is_empty(), "VM pids recorded: {record:?}");
    assert!(
        !record.cgroups.is_empty(),
        "pod cgroup recorded: {record:?}"
    );
    assert!(record.cgroups.iter().all(|c| c.exists()), "{record:?}");
    let scratch = std::fs::read_link(dir.join("scratch.img")).ok();
    assert!(
        !hull_runtime::sandbox::share::mounts_under(&dir).is_empty(),
        "the task's rootfs is mounted into the share"
    );
    let row = ps_row(&c, &sandbox);
    assert!(row.contains(" live "), "{row}");

    // Nothing will run `shim delete`: containerd goes first, then the shim.
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    c.kill_containerd();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0].0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    wait_for("the shim to die", Duration::from_secs(10), || {
        (!pid_alive(shims[0].0 as u32)).then_some(())
    });
    assert!(dir.exists(), "the killed shim left its state dir");

    let row = ps_row(&c, &sandbox);
    assert!(row.contains(" orphan "), "{row}");
    assert!(
        row.contains(&shims[0].0.to_string()),
        "the owner's pid: {row}"
    );
    let row = ps_row(&c, LIVE);
    assert!(row.contains(" live "), "{row}");

    let out = hull(&c, &["gc", "--dry-run"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("would remove {sandbox}")),
        "{}",
        output_text(&out)
    );
    assert!(dir.exists(), "a dry run removes nothing");

    let out = hull(&c, &["gc"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "one line: {}", output_text(&out));
    assert!(
        text.starts_with(&format!(
            "removed {sandbox} (owner pid {} gone)",
            shims[0].0
        )),
        "{}",
        output_text(&out)
    );
    assert!(!text.contains(LIVE), "{}", output_text(&out));
    wait_for("the VM's processes to go", Duration::from_secs(5), || {
        processes_of(&dir).is_empty().then_some(())
    });
    assert!(
        hull_runtime::sandbox::share::mounts_under(&dir).is_empty(),
        "no mount under the state dir"
    );
    assert!(!dir.exists(), "the state dir is removed");
    if let Some(scratch) = scratch {
        assert!(
            !scratch.exists(),
            "scratch disk {} removed",
            scratch.display()
        );
    }
    for cg in &record.cgroups {
        assert!(!cg.exists(), "pod cgroup {} removed", cg.display());
    }

    let out = hull(&c, &["gc"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing to do: no orphaned sandbox",
        "{}",
        output_text(&out)
    );
    let out = hull(&c, &["gc", "-v"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("skipped {LIVE} (live")),
        "{}",
        output_text(&out)
    );

    // The live sandbox was not touched: it still answers.
    let out = hull(&c, &["exec", LIVE, "--", "echo", "still here"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(live.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop hull run");
    let status = live.wait().expect("hull run exits");
    assert!(status.success(), "hull run: {status:?}");
    c.state.assert_nothing_left();
}
