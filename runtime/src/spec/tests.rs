use super::*;

fn image() -> ImageConfig {
    ImageConfig {
        env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
        cmd: Some(vec!["sh".into()]),
        entrypoint: None,
        working_dir: Some("/work".into()),
        user: None,
    }
}

fn json(opts: &ContainerOptions, img: &ImageConfig) -> serde_json::Value {
    let spec = generate(opts, img, "/run/hull/share/containers/c1/rootfs", None).expect("spec");
    serde_json::from_slice(&to_json(&spec).expect("json")).expect("parse")
}

#[test]
fn containerd_defaults_are_all_there() {
    let opts = ContainerOptions {
        args: vec!["echo".into(), "hi".into()],
        hostname: "pod1".into(),
        ..Default::default()
    };
    let v = json(&opts, &image());
    assert_eq!(v["hostname"], "pod1");
    assert_eq!(v["root"]["path"], "/run/hull/share/containers/c1/rootfs");
    assert_eq!(v["root"]["readonly"], false);
    assert_eq!(v["process"]["args"], serde_json::json!(["echo", "hi"]));
    assert_eq!(v["process"]["cwd"], "/work");
    assert_eq!(v["process"]["user"]["uid"], 0);
    let mut caps: Vec<String> =
        serde_json::from_value(v["process"]["capabilities"]["bounding"].clone()).expect("caps");
    caps.sort();
    assert_eq!(caps.len(), 14, "{caps:?}");
    assert!(
        caps.contains(&"CAP_CHOWN".to_string()) && !caps.contains(&"CAP_SYS_ADMIN".to_string())
    );
    assert_eq!(v["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
    assert_eq!(v["process"]["rlimits"][0]["hard"], 1024);
    let dests: Vec<&str> = v["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["destination"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup"
        ]
    );
    let masked = v["linux"]["maskedPaths"].as_array().expect("masked");
    assert!(masked.contains(&serde_json::json!("/proc/kcore")));
    assert!(v["linux"]["readonlyPaths"]
        .as_array()
        .expect("ro")
        .contains(&serde_json::json!("/proc/sys")));
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .expect("ns")
        .iter()
        .map(|n| n["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network", "cgroup"]);
    let devices = v["linux"]["resources"]["devices"]
        .as_array()
        .expect("devices");
    assert_eq!(devices[0]["allow"], false);
    assert_eq!(devices[0]["access"], "rwm");
}

#[test]
fn seccomp_is_containerds_default_profile() {
    let v = json(
        &ContainerOptions {
            args: vec!["true".into()],
            ..Default::default()
        },
        &image(),
    );
    let s = &v["linux"]["seccomp"];
    assert_eq!(s["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(
        s["architectures"],
        serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
    );
    let rules = s["syscalls"].as_array().expect("rules");
    let allowed: Vec<&str> = rules
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
        .flat_map(|r| {
            r["names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str())
        })
        .collect();
    for must in ["read", "write", "execve", "openat"].iter() {
        assert!(allowed.contains(must), "{must} not allowed");
    }
    for denied in ["mount", "unshare", "setns", "reboot", "kexec_load", "bpf"].iter() {
        assert!(
            !allowed.contains(denied),
            "{denied} must not be allowed without its capability"
        );
    }
    assert!(
        allowed.contains(&"chroot"),
        "CAP_SYS_CHROOT is in the default set"
    );
    // clone without namespace flags, clone3 -> ENOSYS.
    let clone = rules
        .iter()
        .find(|r| r["names"] == serde_json::json!(["clone"]))
        .expect("clone rule");
    assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
    assert_eq!(clone["args"][0]["value"], 0x7E02_0000u64);
    let clone3 = rules
        .iter()
        .find(|r| r["names"] == serde_json::json!(["clone3"]))
        .expect("clone3 rule");
    assert_eq!(clone3["errnoRet"], libc::ENOSYS);
    assert!(seccomp::allowed_names().len() > 300);
}

#[test]
fn env_user_workdir_resources_and_volumes() {
    let opts = ContainerOptions {
        args: vec![],
        env: vec!["A=2".into(), "B=3".into()],
        workdir: Some("/tmp".into()),
        user: Some("1000:1001".into()),
        memory: Some(units::parse_memory("512M").expect("mem")),
        cpus: Some(1.5),
        pids_limit: Some(64),
        read_only: true,
        terminal: true,
        hostname: "h".into(),
        mounts: vec![BindMount {
            source: "/run/hull/share/containers/c1/volumes/0".into(),
            destination: "/data".into(),
            readonly: true,
        }],
    };
    let v = json(&opts, &image());
    assert_eq!(
        v["process"]["args"],
        serde_json::json!(["sh"]),
        "image Cmd when no command"
    );
    assert_eq!(
        v["process"]["env"],
        serde_json::json!(["PATH=/bin", "A=2", "B=3", "TERM=xterm"])
    );
    assert_eq!(v["process"]["cwd"], "/tmp");
    assert_eq!(v["process"]["terminal"], true);
    assert_eq!(v["process"]["user"]["uid"], 1000);
    assert_eq!(v["process"]["user"]["gid"], 1001);
    assert_eq!(v["root"]["readonly"], true);
    assert_eq!(v["linux"]["resources"]["memory"]["limit"], 512 << 20);
    assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 150_000);
    assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100_000);
    assert_eq!(v["linux"]["resources"]["pids"]["limit"], 64);
    let vol = v["mounts"]
        .as_array()
        .expect("mounts")
        .last()
        .expect("vol")
        .clone();
    assert_eq!(vol["destination"], "/data");
    assert_eq!(vol["type"], "bind");
    assert_eq!(vol["source"], "/run/hull/share/containers/c1/volumes/0");
    assert_eq!(
        vol["options"],
        serde_json::json!(["rbind", "rprivate", "ro"])
    );
}

#[test]
fn args_follow_entrypoint_and_cmd_rules() {
    let mut img = image();
    img.entrypoint = Some(vec!["/bin/busybox".into()]);
    assert_eq!(process_args(&img, &[]).expect("a"), ["/bin/busybox", "sh"]);
    assert_eq!(
        process_args(&img, &["ls".into()]).expect("a"),
        ["/bin/busybox", "ls"]
    );
    let empty = ImageConfig::default();
    assert!(matches!(process_args(&empty, &[]), Err(SpecError::NoArgs)));
    let err = generate(&ContainerOptions::default(), &empty, "/r", None).expect_err("no args");
    assert!(err.to_string().contains("no command"), "{err}");
}

#[test]
fn bad_values_are_named() {
    assert_eq!(units::parse_memory("512M").expect("m"), 512 << 20);
    assert_eq!(units::parse_memory("1G").expect("g"), 1 << 30);
    assert_eq!(units::parse_memory("1g").expect("g"), 1 << 30);
    assert_eq!(units::parse_memory("67108864").expect("bytes"), 64 << 20);
    for bad in [
        "",
        "abc",
        "12X",
        "-5M",
        "1.5G",
        "1M",
        "99999999999999999999G",
    ] {
        let err = units::parse_memory(bad).expect_err(bad);
        assert!(err.to_string().contains("--memory"), "{err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    assert!(units::parse_cpus("0").is_err());
    assert!(units::parse_cpus("x").is_err());
    assert_eq!(units::parse_cpus("0.5").expect("c"), 0.5);
    let opts = ContainerOptions {
        args: vec!["x".into()],
        env: vec!["NOEQUALS".into()],
        ..Default::default()
    };
    assert!(generate(&opts, &image(), "/r", None)
        .expect_err("env")
        .to_string()
        .contains("--env"));
    let opts = ContainerOptions {
        args: vec!["x".into()],
        workdir: Some("rel".into()),
        ..Default::default()
    };
    assert!(generate(&opts, &image(), "/r", None).is_err());
    let opts = ContainerOptions {
        args: vec!["x".into()],
        user: Some("nobody".into()),
        ..Default::default()
    };
    let err = generate(&opts, &image(), "/r", None).expect_err("user");
    assert!(err.to_string().contains("nobody"), "{err}");
}

#[test]
fn user_names_come_from_the_image() {
    let t = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(t.path().join("etc")).expect("etc");
    std::fs::write(
        t.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(t.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("group");
    assert_eq!(
        units::resolve_user("www", Some(t.path())).expect("www"),
        (33, 34)
    );
    assert_eq!(
        units::resolve_user("33", Some(t.path())).expect("33"),
        (33, 34)
    );
    assert_eq!(
        units::resolve_user("www:staff", Some(t.path())).expect("staff"),
        (33, 50)
    );
    assert_eq!(
        units::resolve_user("4000", Some(t.path())).expect("4000"),
        (4000, 0)
    );
    assert!(units::resolve_user("ghost", Some(t.path())).is_err());
}
