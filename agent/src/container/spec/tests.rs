use super::*;

fn spec_json(args: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2","process":{{"args":{args},"cwd":"/","user":{{"uid":0,"gid":0}},"env":["PATH=/bin"]}},
        "root":{{"path":"/run/hull/share/containers/c1/rootfs","readonly":true}},
        "hooks":{{"prestart":[{{"path":"/host/bin/hook"}}]}},
        "linux":{{"cgroupsPath":"/k8s/c1","namespaces":[{{"type":"pid"}},{{"type":"network","path":"/var/run/netns/x"}},{{"type":"mount"}}]}}}}"#
    )
}

#[test]
fn ids() {
    for ok in ["a", "c1", "A-b_c.d", &"x".repeat(64)] {
        assert_eq!(validate_id("container id", ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "..",
        ".",
        "a..b",
        "a/b",
        "a b",
        "é",
        &"x".repeat(65),
        "../etc",
    ] {
        assert!(validate_id("container id", bad).is_err(), "{bad:?}");
    }
    let msg = validate_id("exec id", "a/b").unwrap_err().to_string();
    assert!(msg.contains("exec id") && msg.contains("a/b"), "{msg}");
}

#[test]
fn spec_is_adapted_for_the_guest() {
    let spec = parse_spec(spec_json(r#"["echo","hi"]"#).as_bytes(), "c1").unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/hull/c1")));
    let types: Vec<_> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert_eq!(types, [LinuxNamespaceType::Pid, LinuxNamespaceType::Mount]);
    assert!(spec.hooks().is_none());
    assert!(!wants_terminal(&spec));
}

#[test]
fn spec_without_args_is_refused_with_a_clear_error() {
    for args in ["[]", r#"[""]"#] {
        let err = parse_spec(spec_json(args).as_bytes(), "c1").unwrap_err();
        assert!(err.to_string().contains("args is empty"), "{err}");
    }
}

#[test]
fn bad_json_and_missing_parts() {
    assert!(matches!(parse_spec(b"{", "c1"), Err(SpecError::Json(_))));
    let no_root = r#"{"ociVersion":"1.0.2","process":{"args":["a"],"cwd":"/","user":{"uid":0,"gid":0}},"linux":{}}"#;
    let err = parse_spec(no_root.as_bytes(), "c1").unwrap_err();
    assert!(err.to_string().contains("no root"), "{err}");
    let rel = spec_json(r#"["a"]"#).replace("/run/hull/share/containers/c1/rootfs", "rootfs");
    let err = parse_spec(rel.as_bytes(), "c1").unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
}

#[test]
fn ipc_namespace_path_is_refused() {
    let json = spec_json(r#"["a"]"#).replace(
        r#"{"type":"mount"}"#,
        r#"{"type":"ipc","path":"/proc/1/ns/ipc"}"#,
    );
    let err = parse_spec(json.as_bytes(), "c1").unwrap_err();
    assert!(err.to_string().contains("namespace path"), "{err}");
}

#[test]
fn process_checks() {
    let p =
        parse_process(br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/tmp","env":["A=1"]}"#)
            .unwrap();
    assert_eq!(p.args().as_ref().unwrap()[0], "sh");
    let err =
        parse_process(br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"tmp"}"#).unwrap_err();
    assert!(err.to_string().contains("cwd"), "{err}");
    let err =
        parse_process(br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/","env":["NOEQ"]}"#)
            .unwrap_err();
    assert!(err.to_string().contains("KEY=VALUE"), "{err}");
}

#[test]
fn pod_containers_join_the_sandbox_namespaces_by_guest_pid() {
    // The shim sends the spec without paths (adapt refuses any) plus the types to share.
    let json =
        spec_json(r#"["a"]"#).replace(r#"{"type":"mount"}"#, r#"{"type":"mount"},{"type":"ipc"}"#);
    let mut spec = parse_spec(json.as_bytes(), "c1").unwrap();
    let types: Vec<_> = ["ipc", "uts", "pid"]
        .iter()
        .map(|n| sandbox_namespace(n).unwrap())
        .collect();
    join_namespaces(&mut spec, 42, &types).unwrap();
    let nss = spec
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap();
    let path = |t: LinuxNamespaceType| {
        nss.iter()
            .find(|n| n.typ() == t)
            .and_then(|n| n.path().as_ref())
            .map(|p| p.display().to_string())
    };
    assert_eq!(
        path(LinuxNamespaceType::Ipc).as_deref(),
        Some("/proc/42/ns/ipc")
    );
    assert_eq!(
        path(LinuxNamespaceType::Pid).as_deref(),
        Some("/proc/42/ns/pid")
    );
    // A type the spec lacked (uts) is added, joined.
    assert_eq!(
        path(LinuxNamespaceType::Uts).as_deref(),
        Some("/proc/42/ns/uts")
    );
    // What is not shared stays the container's own, and nothing is duplicated.
    assert_eq!(path(LinuxNamespaceType::Mount), None);
    assert!(nss.iter().any(|n| n.typ() == LinuxNamespaceType::Mount));
    assert_eq!(nss.len(), 4, "{nss:?}");
}

#[test]
fn only_ipc_uts_pid_are_shared_with_the_sandbox() {
    for bad in [
        "mount", "mnt", "net", "network", "user", "cgroup", "", "IPC",
    ] {
        let err = sandbox_namespace(bad).unwrap_err().to_string();
        assert!(err.contains("only ipc, uts and pid"), "{bad}: {err}");
    }
    let mut spec = parse_spec(spec_json(r#"["a"]"#).as_bytes(), "c1").unwrap();
    let err = join_namespaces(&mut spec, 0, &[LinuxNamespaceType::Ipc]).unwrap_err();
    assert!(err.to_string().contains("not a process"), "{err}");
}

#[test]
fn a_process_without_memlock_gets_the_agents_and_one_with_it_keeps_its_own() {
    use oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType, ProcessBuilder};
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .expect("getrlimit");
    let mut p = ProcessBuilder::default().build().expect("process");
    pin_memlock(&mut p);
    let memlock = |p: &oci_spec::runtime::Process| -> Vec<(u64, u64)> {
        p.rlimits()
            .clone()
            .unwrap_or_default()
            .iter()
            .filter(|r| r.typ() == PosixRlimitType::RlimitMemlock)
            .map(|r| (r.soft(), r.hard()))
            .collect()
    };
    assert_eq!(memlock(&p), vec![(soft, hard)]);
    let own = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitMemlock)
        .soft(1u64)
        .hard(2u64)
        .build()
        .expect("rlimit");
    let mut p = ProcessBuilder::default()
        .rlimits(vec![own])
        .build()
        .expect("process");
    pin_memlock(&mut p);
    assert_eq!(memlock(&p), vec![(1, 2)]);
}

#[test]
fn only_devices_the_system_has_are_kept() {
    // /dev/null (1:3) exists wherever this runs; 4095:4095 nowhere.
    let json = spec_json(r#"["true"]"#).replace(
        r#""cgroupsPath":"/k8s/c1","#,
        r#""cgroupsPath":"/k8s/c1","devices":[
            {"path":"/dev/null2","type":"c","major":1,"minor":3},
            {"path":"/dev/host-only","type":"b","major":4095,"minor":4095},
            {"path":"/dev/fifo","type":"p","major":0,"minor":0}],"#,
    );
    let spec = parse_spec(json.as_bytes(), "c1").unwrap();
    let kept: Vec<_> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    assert_eq!(kept, ["/dev/null2", "/dev/fifo"]);
}
