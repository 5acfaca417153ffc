//! Docker-in-Docker in a privileged hull container (`ctr run --privileged`): Debian's
//! dockerd 28, with its own containerd 2.1 and runc, starts inside the container in the
//! pod's guest and runs nested containers there: one on Docker's default bridge network
//! (docker0, a veth pair and an iptables-nft MASQUERADE rule made in the guest's
//! kernel), one without a network, whose exit code comes back. The image and its
//! script, `dind-smoke`, are built by scripts/dind-image.

use std::process::Command;

use hull_tests::containerd::{run_cmd, Containerd, RUNTIME};
use hull_tests::output_text;

macro_rules! need_containerd {
    ($name:expr) => {
        if !hull_tests::containerd::require_containerd($name) {
            return;
        }
    };
}

/// The image scripts/dind-image builds, as [`Containerd::import`] names its tag.
const IMAGE: &str = "dind:latest";

#[test]
fn dockerd_runs_in_a_privileged_hull_container_and_runs_a_nested_container() {
    need_containerd!("dockerd_runs_in_a_privileged_hull_container_and_runs_a_nested_container");
    let layout =
        hull_runtime::image::images_dir(&hull_runtime::config::default_cache_dir()).join("dind");
    let image = if layout.join("index.json").exists() {
        Ok(())
    } else {
        Err(format!(
            "no Docker-in-Docker image at {} (run scripts/dind-image; scripts/setup does)",
            layout.display()
        ))
    };
    if !hull_tests::require(
        "dockerd_runs_in_a_privileged_hull_container_and_runs_a_nested_container",
        image,
    ) {
        return;
    }
    let c = Containerd::start();
    c.import("default", &layout, "dind");
    // dind-smoke waits up to 180 s for dockerd alone: more than `Containerd::ctr`'s
    // 120 s, so the same `timeout` with room for the whole run.
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "600"])
        .arg(c.ctr_binary())
        .arg("-a")
        .arg(c.socket())
        .args([
            "run",
            "--rm",
            "--privileged",
            "--runtime",
            RUNTIME,
            "--memory-limit",
            "1073741824",
            IMAGE,
            "dind1",
            "/usr/local/bin/dind-smoke",
        ]);
    let out = run_cmd(cmd, None);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hello from nested docker"),
        "{}",
        output_text(&out)
    );
    assert!(text.contains("dind-smoke: ok"), "{}", output_text(&out));
    c.assert_nothing_left();
}
