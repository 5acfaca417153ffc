//! The jail with real namespaces: a shell run in it (as root runs hull) sees only what
//! the jail holds, as the sandbox uid, without capabilities.

use super::*;
use crate::config::JailConfig;

#[test]
fn paths_inside_the_root_refuse_relative_and_parent_components() {
    let root = Path::new("/j");
    assert_eq!(
        inside(root, Path::new("/var/a")).expect("ok"),
        PathBuf::from("/j/var/a")
    );
    assert!(matches!(
        inside(root, Path::new("var/a")),
        Err(JailError::BadPath(_))
    ));
    assert!(matches!(
        inside(root, Path::new("/var/../etc")),
        Err(JailError::BadPath(_))
    ));
}

/// Skips (saying why) unless root; with HULL_REQUIRE_E2E=1 a skip is a failure.
fn need_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("HULL_REQUIRE_E2E").as_deref() != Ok("1"),
        "{test}: needs root (HULL_REQUIRE_E2E=1)"
    );
    println!("SKIP {test}: needs root");
    false
}

fn test_config(lease_dir: &Path, start: u32) -> JailConfig {
    JailConfig {
        lease_dir: lease_dir.to_path_buf(),
        uid_start: start,
        uid_count: 8,
        ..JailConfig::default()
    }
}

#[tokio::test]
async fn a_jailed_process_sees_only_its_jail_as_the_sandbox_uid() {
    if !need_root("a_jailed_process_sees_only_its_jail_as_the_sandbox_uid") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let file = tmp.path().join("kernel");
    std::fs::write(&file, "kernel bytes\n").expect("file");
    let jail = Jail::create(
        &test_config(&tmp.path().join("leases"), 3_910_000_000),
        &state,
        "t",
    )
    .expect("jail");
    let uid = jail.uid();
    assert!((3_910_000_000..3_910_000_008).contains(&uid));
    let script = format!(
        "id -u; id -g; cat {file}; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
         cat /etc/hostname || echo no-hostname; ls /root || echo no-root; \
         touch /x 2>/dev/null || echo ro-root; touch {sock}/s && echo sock-writable; \
         ls /proc | grep -c '^1$' || echo no-pid-1",
        file = file.display(),
        sock = jail.sock_dir().display()
    );
    let mut cmd = jail
        .command("sh", Path::new("/bin/sh"), &[&file], Devices::Basic)
        .expect("jailed command");
    cmd.args(["-c", &script]);
    let out = cmd.output().await.expect("run the jailed shell");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], uid.to_string(), "{text}");
    assert_eq!(lines[1], uid.to_string(), "{text}");
    assert_eq!(lines[2], "kernel bytes", "the ro file is there: {text}");
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("CapBnd:\t0000000000000000"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(
        text.contains("no-hostname") && err.contains("/etc/hostname"),
        "{text}\n{err}"
    );
    assert!(text.contains("no-root"), "{text}");
    assert!(text.contains("ro-root"), "{text}");
    assert!(text.contains("sock-writable"), "{text}");
    assert!(
        text.contains("no-pid-1"),
        "host processes are hidden: {text}"
    );
    // Nothing was mounted on the host.
    assert!(crate::sandbox::share::mounts_under(tmp.path()).is_empty());
    // The file the jailed shell wrote belongs to the sandbox uid.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(jail.sock_dir().join("s")).expect("file from the jail");
    assert_eq!(meta.uid(), uid);
    // The same helper started again in the same jail (a VM booted cold after a failed
    // restore) finds its root as the first left it.
    let mut again = jail
        .command("sh", Path::new("/bin/sh"), &[&file], Devices::Basic)
        .expect("a second jailed command for the same helper");
    again.args(["-c", "id -u"]);
    let out = again.output().await.expect("run it again");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), uid.to_string());
}

#[test]
fn the_jail_refuses_a_non_root_caller_by_name_and_a_full_range() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = JailError::NotRoot(1000).to_string();
    assert!(e.contains("[jail] enabled = false"), "{e}");
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let mut cfg = test_config(&tmp.path().join("leases"), 3_910_000_100);
    cfg.uid_count = 1;
    let s1 = tmp.path().join("s1");
    let s2 = tmp.path().join("s2");
    std::fs::create_dir(&s1).expect("s1");
    std::fs::create_dir(&s2).expect("s2");
    let _j = Jail::create(&cfg, &s1, "a").expect("first");
    let e = Jail::create(&cfg, &s2, "b").expect_err("range full");
    assert!(matches!(e, JailError::NoFreeUid { .. }), "{e}");
}
