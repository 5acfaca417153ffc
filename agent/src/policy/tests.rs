use serde_json::{json, Value};

use super::check::{admit, Request, State};
use super::*;
use crate::service::ServiceError;
use hull_proto::{
    CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest, Storage,
    UpdateContainerRequest,
};

const STRICT: &str = include_str!("../../../guest-image/policy/strict.toml");

fn default_policies() -> Policies {
    Policies::builtin().expect("default policy")
}

/// The default with privileged containers forbidden, as an operator's image may bake.
fn no_privileged_policies() -> Policies {
    Policies::new(
        Policy::parse("name = \"no-privileged\"\n[containers]\nallow_privileged = false\n")
            .expect("policy"),
    )
}

fn strict_policies() -> Policies {
    Policies::new(Policy::parse(STRICT).expect("strict policy"))
}

/// A spec the strict policy allows: containerd's default caps, seccomp, read-only
/// rootfs, mounts of the allowed types, binds from the share.
fn spec() -> Value {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["sh"], "cwd": "/", "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        },
        "root": {"path": "/run/hull/share/containers/c1/rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/data", "type": "bind", "source": "/run/hull/share/containers/c1/volumes/0", "options": ["rbind"]},
            {"destination": "/etc/hosts", "source": "/run/hull/sandbox/hosts", "options": ["rbind", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "resources": {"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]},
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},
            "sysctl": {"net.ipv4.ping_group_range": "0 0"}
        }
    })
}

fn create(spec: &Value) -> CreateContainerRequest {
    let mut r = CreateContainerRequest::new();
    r.container_id = "c1".into();
    r.oci_spec_json = serde_json::to_vec(spec).expect("json");
    r
}

fn exec(container: &str, process: &Value) -> ExecProcessRequest {
    let mut r = ExecProcessRequest::new();
    r.container_id = container.into();
    r.exec_id = "e1".into();
    r.process_json = serde_json::to_vec(process).expect("json");
    r
}

/// The refusal's text; panics if the request was admitted or failed otherwise.
fn denied(p: &Policies, req: Request<'_>) -> String {
    match admit(p, req, State::default()) {
        Err(ServiceError::PermissionDenied(m)) => m,
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

#[test]
fn shipped_policies_parse_and_the_builtin_is_the_default() {
    let d = Policy::parse(BUILTIN_DEFAULT).expect("default");
    assert_eq!(d.name, "default");
    assert!(d.exec.allow && d.exec.allow_debug && d.containers.allow_privileged);
    let s = Policy::parse(STRICT).expect("strict");
    assert_eq!(s.name, "ci-strict");
    assert!(
        !s.exec.allow
            && s.containers.require_seccomp
            && s.containers.capabilities.as_ref().unwrap().len() == 14
    );
}

#[test]
fn bad_documents_are_named() {
    let e = Policy::parse("name = \"x\"\n[exec]\nalow = true\n").unwrap_err();
    assert!(e.to_string().contains("alow"), "{e}");
    let e = Policy::parse("[exec]\nallow = true\n").unwrap_err();
    assert!(e.to_string().contains("name"), "{e}");
    let e =
        Policy::parse("name = \"x\"\n[containers]\ncapabilities = [\"CAP_FLY\"]\n").unwrap_err();
    assert!(e.to_string().contains("CAP_FLY"), "{e}");
    let e = Policy::parse("name = \"x\"\n[mounts]\nbind_sources = [\"run/x\"]\n").unwrap_err();
    assert!(
        e.to_string().contains("bind_sources entry \"run/x\""),
        "{e}"
    );
    let e = Policy::parse("name = \"x\"\n[sysctls]\nallow = [\"net.*.x\"]\n").unwrap_err();
    assert!(e.to_string().contains("sysctls.allow"), "{e}");
    assert!(Policy::parse("name = \"\"\n").is_err());
    assert!(Policy::parse(&format!("name = \"x\"\n#{}\n", "a".repeat(MAX_DOCUMENT))).is_err());
}

#[test]
fn an_empty_document_allows_everything_but_is_named() {
    let p = Policies::new(Policy::parse("name = \"open\"\n").expect("open"));
    let mut s = spec();
    s["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN"]);
    assert!(admit(&p, Request::CreateContainer(&create(&s)), State::default()).is_ok());
}

#[test]
fn the_strict_policy_allows_a_well_behaved_container_and_the_default_too() {
    let req = create(&spec());
    assert!(admit(
        &strict_policies(),
        Request::CreateContainer(&req),
        State::default()
    )
    .is_ok());
    assert!(admit(
        &default_policies(),
        Request::CreateContainer(&req),
        State::default()
    )
    .is_ok());
}

#[test]
fn exec_rule() {
    let p = json!({"args": ["ls"], "cwd": "/"});
    let m = denied(&strict_policies(), Request::ExecProcess(&exec("c1", &p)));
    assert_eq!(m, "policy: exec is not allowed (policy \"ci-strict\")");
    assert!(admit(
        &default_policies(),
        Request::ExecProcess(&exec("c1", &p)),
        State::default()
    )
    .is_ok());
}

#[test]
fn debug_exec_rule() {
    let p = json!({"args": ["ls"], "cwd": "/"});
    let m = denied(&strict_policies(), Request::ExecProcess(&exec("", &p)));
    assert!(m.contains("debug processes are not allowed"), "{m}");
    let mut sb = CreateSandboxRequest::new();
    sb.debug_exec = true;
    let m = denied(&strict_policies(), Request::CreateSandbox(&sb));
    assert!(m.contains("debug_exec") && m.contains("ci-strict"), "{m}");
    assert!(admit(
        &default_policies(),
        Request::CreateSandbox(&sb),
        State::default()
    )
    .is_ok());
}

#[test]
fn privileged_rule() {
    // The default allows privileged containers (the VM is the boundary); an operator's
    // policy that forbids them is enforced.
    let mut s = spec();
    s["process"]["capabilities"]["effective"] = json!(["CAP_SYS_ADMIN"]);
    assert!(admit(
        &default_policies(),
        Request::CreateContainer(&create(&s)),
        State::default()
    )
    .is_ok());
    let mut s = spec();
    s["process"]["capabilities"]["effective"] = json!(["CAP_SYS_ADMIN"]);
    let m = denied(
        &no_privileged_policies(),
        Request::CreateContainer(&create(&s)),
    );
    assert!(m.contains("privileged containers are not allowed (CAP_SYS_ADMIN in process.capabilities.effective)"), "{m}");
    assert!(m.contains("policy \"no-privileged\""), "{m}");

    let mut s = spec();
    s["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
    let m = denied(
        &no_privileged_policies(),
        Request::CreateContainer(&create(&s)),
    );
    assert!(m.contains("allows every device"), "{m}");

    let mut s = spec();
    s["linux"]["devices"] = json!([{"path": "/dev/vda", "type": "b", "major": 254, "minor": 0}]);
    let m = denied(
        &no_privileged_policies(),
        Request::CreateContainer(&create(&s)),
    );
    assert!(
        m.contains("linux.devices gives the container /dev/vda"),
        "{m}"
    );

    // UpdateContainer cannot open the devices later, nor an exec gain CAP_SYS_ADMIN.
    let mut u = UpdateContainerRequest::new();
    u.container_id = "c1".into();
    u.resources_json = br#"{"devices": [{"allow": true, "type": "a", "access": "rwm"}]}"#.to_vec();
    let m = denied(&no_privileged_policies(), Request::UpdateContainer(&u));
    assert!(
        m.contains("UpdateContainer resources allows every device"),
        "{m}"
    );
    let p = json!({"args": ["ls"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "capabilities": {"ambient": ["CAP_SYS_ADMIN"]}});
    let m = denied(
        &no_privileged_policies(),
        Request::ExecProcess(&exec("c1", &p)),
    );
    assert!(
        m.contains("CAP_SYS_ADMIN in exec process.capabilities.ambient"),
        "{m}"
    );
}

#[test]
fn capability_rule() {
    let mut s = spec();
    s["process"]["capabilities"]["bounding"] = json!(["CAP_CHOWN", "CAP_SYS_MODULE"]);
    let req = create(&s);
    let m = denied(&strict_policies(), Request::CreateContainer(&req));
    assert_eq!(m, "policy: capability CAP_SYS_MODULE is not allowed (process.capabilities.bounding) (policy \"ci-strict\")");
    assert!(admit(
        &default_policies(),
        Request::CreateContainer(&req),
        State::default()
    )
    .is_ok());
}

#[test]
fn seccomp_and_readonly_rootfs_rules() {
    let mut s = spec();
    s["linux"].as_object_mut().unwrap().remove("seccomp");
    let m = denied(&strict_policies(), Request::CreateContainer(&create(&s)));
    assert!(
        m.contains("a seccomp profile is required (linux.seccomp is missing)"),
        "{m}"
    );
    assert!(admit(
        &default_policies(),
        Request::CreateContainer(&create(&s)),
        State::default()
    )
    .is_ok());
    s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW"});
    let m = denied(&strict_policies(), Request::CreateContainer(&create(&s)));
    assert!(m.contains("allows every syscall"), "{m}");

    let mut s = spec();
    s["root"]["readonly"] = json!(false);
    let m = denied(&strict_policies(), Request::CreateContainer(&create(&s)));
    assert!(m.contains("a read-only rootfs is required"), "{m}");
}

#[test]
fn mount_rules() {
    let mut s = spec();
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/x", "type": "ramfs", "source": "none"}));
    let m = denied(&strict_policies(), Request::CreateContainer(&create(&s)));
    assert!(
        m.contains("mount type \"ramfs\" is not allowed (mount on /x)"),
        "{m}"
    );
    assert!(admit(
        &default_policies(),
        Request::CreateContainer(&create(&s)),
        State::default()
    )
    .is_ok());

    for bad in [
        "/etc",
        "/run/hull/share/../../etc",
        "/run/hull/sharex",
        "relative/path",
    ] {
        let mut s = spec();
        s["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/h", "type": "bind", "source": bad, "options": ["rbind"]}),
        );
        let m = denied(&strict_policies(), Request::CreateContainer(&create(&s)));
        assert!(
            m.contains("bind mount source") && m.contains("bind mount on /h"),
            "{bad}: {m}"
        );
    }
    // A bind storage from outside the allowed dirs, at sandbox or container creation.
    let mut st = Storage::new();
    st.driver = "bind".into();
    st.source = "/etc".into();
    st.mount_point = "/run/x".into();
    let mut req = create(&spec());
    req.storages.push(st.clone());
    let m = denied(&strict_policies(), Request::CreateContainer(&req));
    assert!(m.contains("bind storage on /run/x"), "{m}");
    let mut sb = CreateSandboxRequest::new();
    sb.storages.push(st);
    let m = denied(&strict_policies(), Request::CreateSandbox(&sb));
    assert!(m.contains("\"/etc\""), "{m}");
    // An overlay whose lower dir (the image the container sees) is outside them.
    let mut ov = Storage::new();
    ov.driver = "overlay".into();
    ov.mount_point = "/run/hull/rootfs/c".into();
    ov.options = vec![
        "lowerdir=/run/hull/share/containers/c/rootfs:/etc".into(),
        "upperdir=/run/hull/scratch/c/upper".into(),
        "workdir=/run/hull/scratch/c/work".into(),
    ];
    let mut req = create(&spec());
    req.storages.push(ov);
    let m = denied(&strict_policies(), Request::CreateContainer(&req));
    assert!(
        m.contains("overlay storage on /run/hull/rootfs/c") && m.contains("\"/etc\""),
        "{m}"
    );
}

#[test]
fn a_symlink_cannot_carry_a_bind_source_out_of_an_allowed_dir() {
    let dir = std::env::temp_dir().join(format!("hull-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("escape");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let doc = format!(
        "name = \"t\"\n[mounts]\nbind_sources = [{:?}]\n",
        dir.display().to_string()
    );
    let p = Policies::new(Policy::parse(&doc).unwrap());
    let mut s = spec();
    s["mounts"] =
        json!([{"destination": "/h", "type": "bind", "source": link, "options": ["rbind"]}]);
    let m = denied(&p, Request::CreateContainer(&create(&s)));
    assert!(m.contains("escape"), "{m}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sysctl_rule() {
    let mut s = spec();
    s["linux"]["sysctl"] = json!({"kernel.domainname": "x"});
    let m = denied(&strict_policies(), Request::CreateContainer(&create(&s)));
    assert!(
        m.contains("sysctl \"kernel.domainname\" is not allowed (linux.sysctl)"),
        "{m}"
    );
    let mut sb = CreateSandboxRequest::new();
    sb.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    let m = denied(&strict_policies(), Request::CreateSandbox(&sb));
    assert!(
        m.contains("net.ipv4.ip_forward") && m.contains("CreateSandbox sysctls"),
        "{m}"
    );
    assert!(admit(
        &default_policies(),
        Request::CreateSandbox(&sb),
        State::default()
    )
    .is_ok());
    let p = Policies::new(Policy::parse("name = \"n\"\n[sysctls]\nallow = [\"net.*\"]\n").unwrap());
    assert!(admit(&p, Request::CreateSandbox(&sb), State::default()).is_ok());
}

#[test]
fn max_containers_rule() {
    let req = create(&spec());
    let p = strict_policies();
    assert!(admit(&p, Request::CreateContainer(&req), State { containers: 15 }).is_ok());
    match admit(&p, Request::CreateContainer(&req), State { containers: 16 }) {
        Err(ServiceError::PermissionDenied(m)) => {
            assert!(m.contains("at most 16 containers are allowed"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sent_policy_tightens_the_baked_one_and_is_sealed() {
    let baked = no_privileged_policies();
    let mut sb = CreateSandboxRequest::new();
    sb.policy = STRICT.into();
    assert!(admit(&baked, Request::CreateSandbox(&sb), State::default()).is_ok());
    baked.seal(Some(Policy::parse(STRICT).unwrap())).unwrap();
    assert_eq!(baked.name(), "ci-strict");
    // Both apply: strict refuses exec, the baked one still refuses CAP_SYS_ADMIN.
    let m = denied(
        &baked,
        Request::ExecProcess(&exec("c1", &json!({"args": ["ls"], "cwd": "/"}))),
    );
    assert!(m.contains("ci-strict"), "{m}");
    let mut s = spec();
    s["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN"]);
    let m = denied(&baked, Request::CreateContainer(&create(&s)));
    assert!(m.contains("policy \"no-privileged\""), "{m}");
    // A second policy, however loose, is refused.
    sb.policy = "name = \"open\"\n".into();
    let m = denied(&baked, Request::CreateSandbox(&sb));
    assert!(m.contains("sealed") && m.contains("ci-strict"), "{m}");
    assert!(matches!(baked.seal(None), Err(PolicyError::Sealed { .. })));
    // A policy sent in a request that itself breaks it is refused by that policy.
    let fresh = default_policies();
    let mut sb = CreateSandboxRequest::new();
    sb.policy = STRICT.into();
    sb.debug_exec = true;
    let m = denied(&fresh, Request::CreateSandbox(&sb));
    assert!(m.contains("ci-strict") && m.contains("debug_exec"), "{m}");
    // Unseal (a failed CreateSandbox) forgets the sent one.
    baked.unseal();
    assert_eq!(baked.name(), "no-privileged");
    assert!(!baked.is_sealed());
}

#[test]
fn a_bad_sent_policy_is_an_invalid_argument() {
    let mut sb = CreateSandboxRequest::new();
    sb.policy = "name = 3".into();
    match admit(
        &default_policies(),
        Request::CreateSandbox(&sb),
        State::default(),
    ) {
        Err(ServiceError::InvalidArgument(m)) => {
            assert!(m.contains("policy document is not valid"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_specs_are_left_to_the_service() {
    let mut req = CreateContainerRequest::new();
    req.oci_spec_json = b"{not json".to_vec();
    assert!(admit(
        &strict_policies(),
        Request::CreateContainer(&req),
        State::default()
    )
    .is_ok());
}

#[test]
fn load_falls_back_to_the_builtin_only_when_there_is_no_file() {
    let p = Policies::load(Path::new("/nonexistent/hull/policy.toml")).unwrap();
    assert_eq!(p.name(), "default");
    let f = std::env::temp_dir().join(format!("hull-policy-load-{}.toml", std::process::id()));
    std::fs::write(&f, STRICT).unwrap();
    assert_eq!(Policies::load(&f).unwrap().name(), "ci-strict");
    std::fs::write(&f, "garbage").unwrap();
    assert!(Policies::load(&f).is_err());
    std::fs::remove_file(&f).unwrap();
}
