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
    for bad in ["", "..", ".", "a..b", "a/b", "a b", "é", &"x".repeat(65), "../etc"] {
        assert!(validate_id("container id", bad).is_err(), "{bad:?}");
    }
    let msg = validate_id("exec id", "a/b").unwrap_err().to_string();
    assert!(msg.contains("exec id") && msg.contains("a/b"), "{msg}");
}

#[test]
fn spec_is_adapted_for_the_guest() {
    let spec = parse_spec(spec_json(r#"["echo","hi"]"#).as_bytes(), "c1").unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/hull/c1"))
    );
    let types: Vec<_> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert_eq!(
        types,
        [LinuxNamespaceType::Pid, LinuxNamespaceType::Mount]
    );
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
    let json = spec_json(r#"["a"]"#).replace(r#"{"type":"mount"}"#, r#"{"type":"ipc","path":"/proc/1/ns/ipc"}"#);
    let err = parse_spec(json.as_bytes(), "c1").unwrap_err();
    assert!(err.to_string().contains("namespace path"), "{err}");
}

#[test]
fn process_checks() {
    let p = parse_process(br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/tmp","env":["A=1"]}"#).unwrap();
    assert_eq!(p.args().as_ref().unwrap()[0], "sh");
    let err = parse_process(br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"tmp"}"#).unwrap_err();
    assert!(err.to_string().contains("cwd"), "{err}");
    let err = parse_process(br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/","env":["NOEQ"]}"#).unwrap_err();
    assert!(err.to_string().contains("KEY=VALUE"), "{err}");
}
