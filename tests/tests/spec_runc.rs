//! The runtime spec hull generates, run by the host's runc on the unpacked demo image:
//! proves the spec (containerd's defaults, the seccomp profile, user, read-only rootfs,
//! env, cwd) is one runc accepts and enforces, independently of the guest agent.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use hull_runtime::image::{Image, ImageRef};
use hull_runtime::spec::{self, ContainerOptions};
use hull_tests::*;

fn runc_available(test: &str) -> bool {
    let ok = Command::new("runc")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        && nix::unistd::geteuid().is_root()
        && demo_image().join("index.json").exists();
    if !ok {
        if std::env::var("HULL_REQUIRE_E2E").as_deref() == Ok("1") {
            panic!("{test}: needs root, runc and the demo image (scripts/setup)");
        }
        eprintln!("SKIP {test}: needs root, runc and the demo image");
    }
    ok
}

/// Unpacks the demo image into `bundle/rootfs`, writes the spec and runs it with runc.
fn runc_run(bundle: &Path, opts: ContainerOptions) -> Output {
    let image = Image::open(&ImageRef {
        dir: demo_image(),
        tag: None,
    })
    .expect("demo image");
    let rootfs = bundle.join("rootfs");
    image.unpack(&rootfs).expect("unpack");
    let s = spec::generate(
        &opts,
        &image.config,
        &rootfs.display().to_string(),
        Some(&rootfs),
    )
    .expect("spec");
    std::fs::write(bundle.join("config.json"), spec::to_json(&s).expect("json"))
        .expect("config.json");
    let id = format!("hull-spec-test-{}", std::process::id());
    let out = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .expect("runc");
    let _ = Command::new("runc").args(["delete", "-f", &id]).output();
    out
}

#[test]
fn runc_runs_and_enforces_the_generated_spec() {
    if !runc_available("runc_runs_and_enforces_the_generated_spec") {
        return;
    }
    let bundle = tempfile::tempdir().expect("bundle");
    let script = "echo pid=$$; hostname; id; echo env=$GREETING; pwd; \
                  unshare -U true 2>/dev/null; echo unshare=$?; \
                  mount -t tmpfs t /mnt 2>/dev/null; echo mount=$?; \
                  touch /rootfs-write 2>/dev/null; echo write=$?";
    let out = runc_run(
        bundle.path(),
        ContainerOptions {
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["GREETING=hi".into()],
            workdir: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            read_only: true,
            hostname: "spec-test".into(),
            ..Default::default()
        },
    );
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "pid=1\n",
        "spec-test\n",
        "uid=1000 gid=1000",
        "env=hi\n",
        "/tmp\n",
        // seccomp: unshare(CLONE_NEWUSER) needs no capability, only the profile stops it
        "unshare=1\n",
        // CAP_SYS_ADMIN is not in the default set
        "mount=1\n",
        // --read-only
        "write=1\n",
    ] {
        assert!(stdout.contains(want), "missing {want:?}: {text}");
    }
}
