//! The agent policy with real QEMU, kernel, agent and virtiofsd: the strict policy
//! (guest-image/policy/strict.toml) sent at CreateSandbox through `[policy] file`
//! refuses exec, privileged containers, capabilities and mounts outside it with named
//! reasons, and a second policy as sealed; the baked default keeps the usual flow.

use std::io::Read;
use std::path::PathBuf;
use std::process::Child;

use hull_runtime::agent_client::StdioSpec;
use hull_runtime::hypervisor;
use hull_runtime::sandbox::{Sandbox, SandboxSpec};
use hull_tests::run_helpers::*;
use hull_tests::*;
use serde_json::{json, Value};

fn strict_policy() -> PathBuf {
    hull_tests::repo_root().join("guest-image/policy/strict.toml")
}

/// A config file sending the strict policy.
fn strict_config(state: &TestState) -> PathBuf {
    let cfg = state.path().join("strict.toml");
    std::fs::write(
        &cfg,
        format!(
            "[policy]\nfile = {:?}\n",
            strict_policy().display().to_string()
        ),
    )
    .expect("config");
    cfg
}

fn hull_with(state: &TestState, config: Option<&std::path::Path>) -> std::process::Command {
    let mut c = state.hull();
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c
}

fn stop_box(mut hull: Child, mut out: std::io::BufReader<std::process::ChildStdout>) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hull.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal hull run");
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert_eq!(hull.wait().expect("wait").code(), Some(0), "{rest}");
}

const BOX_CMD: &[&str] = &[
    "--",
    "sh",
    "-c",
    "trap 'exit 0' TERM; echo ready; while :; do sleep 0.1; done",
];

#[test]
fn strict_policy_refuses_exec_with_the_rule_and_the_default_allows_it() {
    need_run!("strict_policy_refuses_exec_with_the_rule_and_the_default_allows_it");
    let state = TestState::new();
    let cfg = strict_config(&state);

    // A container within the strict policy runs (hull run gives containerd's caps and
    // seccomp profile; the policy wants a read-only rootfs)...
    const NAME: &str = "strict-box";
    let mut args = demo(&["--read-only", "--name", NAME]);
    args.extend(BOX_CMD.iter().map(|s| s.to_string()));
    let (hull, out) = start_ready(hull_with(&state, Some(&cfg)), &args);
    let record = std::fs::read_to_string(state.path().join("vms").join(NAME).join("sandbox.json"))
        .expect("record");
    let record: Value = serde_json::from_str(&record).expect("json");
    assert_eq!(
        record["policy"],
        json!(strict_policy().display().to_string()),
        "{record}"
    );

    // ...but no exec into it: the agent names the rule and the policy.
    let exec = hull_in(state.hull(), "exec", &[NAME, "--", "true"], None);
    assert_eq!(exec.status.code(), Some(125), "{}", output_text(&exec));
    assert!(
        stderr(&exec).contains("PermissionDenied") || stderr(&exec).contains("PERMISSION_DENIED"),
        "{}",
        output_text(&exec)
    );
    assert!(
        stderr(&exec).contains("policy: exec is not allowed (policy \"ci-strict\")"),
        "{}",
        output_text(&exec)
    );
    stop_box(hull, out);
    state.assert_nothing_left();

    // A writable rootfs breaks the strict policy: refused, named, nothing left.
    let run = run_in(
        hull_with(&state, Some(&cfg)),
        &refs(&demo(&["--", "true"])),
        None,
    );
    assert_eq!(run.status.code(), Some(125), "{}", output_text(&run));
    assert!(
        stderr(&run).contains(
            "a read-only rootfs is required (root.readonly is not true) (policy \"ci-strict\")"
        ),
        "{}",
        output_text(&run)
    );
    state.assert_nothing_left();

    // The baked default policy: the same container takes execs.
    const OPEN: &str = "default-box";
    let mut args = demo(&["--name", OPEN]);
    args.extend(BOX_CMD.iter().map(|s| s.to_string()));
    let (hull, out) = start_ready(state.hull(), &args);
    let exec = hull_in(state.hull(), "exec", &[OPEN, "--", "echo", "exec ok"], None);
    assert_eq!(exec.status.code(), Some(0), "{}", output_text(&exec));
    assert_eq!(stdout(&exec), "exec ok\n");
    stop_box(hull, out);
    state.assert_nothing_left();

    // A policy file that is not there is named before anything boots.
    let missing = state.path().join("missing.toml");
    std::fs::write(&missing, "[policy]\nfile = \"/nonexistent/policy.toml\"\n").expect("config");
    let run = run_in(
        hull_with(&state, Some(&missing)),
        &refs(&demo(&["--", "true"])),
        None,
    );
    assert_eq!(run.status.code(), Some(125), "{}", output_text(&run));
    assert!(
        stderr(&run).contains("cannot read the agent policy /nonexistent/policy.toml"),
        "{}",
        output_text(&run)
    );
    state.assert_nothing_left();
}

/// A spec the strict policy allows apart from what `change` does. Its rootfs does
/// not exist: the policy refuses before the agent looks.
fn spec(change: impl FnOnce(&mut Value)) -> oci_spec::runtime::Spec {
    let caps = ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"];
    let mut s = json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        },
        "root": {"path": "/run/hull/share/containers/none/rootfs", "readonly": true},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["exit_group"], "action": "SCMP_ACT_ALLOW"}]}
        }
    });
    change(&mut s);
    serde_json::from_value(s).expect("an OCI spec")
}

#[tokio::test]
async fn strict_policy_refuses_privileged_capabilities_mounts_and_a_second_policy() {
    if !require_vm("strict_policy_refuses_privileged_capabilities_mounts_and_a_second_policy") {
        return;
    }
    let state = TestState::new();
    let mut config = state.config();
    config.policy.file = Some(strict_policy());
    let mut spec_ = SandboxSpec::from_config(&config);
    spec_.share = true;
    let sandbox = Sandbox::boot(
        &config,
        &spec_,
        hypervisor::select(&config).expect("backend"),
    )
    .await
    .expect("boot");
    sandbox
        .prepare_guest("policy-pod")
        .await
        .expect("CreateSandbox with the strict policy");
    let agent = sandbox.agent().expect("agent");
    let stdio = StdioSpec::default();

    // `policy` names the policy that refuses (the baked default allows privileged
    // containers: the sent strict policy refuses them).
    let refused_by =
        |r: Result<(), hull_runtime::agent_client::AgentError>, want: &str, policy: &str| {
            let e = r.expect_err(want).to_string();
            assert!(
                e.contains("PERMISSION_DENIED") || e.contains("PermissionDenied"),
                "{e}"
            );
            assert!(
                e.contains(want) && e.contains(&format!("(policy {policy:?})")),
                "wanted {want:?} by {policy}: {e}"
            );
        };
    let refused = |r, want: &str| refused_by(r, want, "ci-strict");
    let privileged = spec(|s| {
        s["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN"]);
    });
    refused_by(
        agent
            .create_container("priv", &privileged, &[], &stdio)
            .await,
        "privileged containers are not allowed (CAP_SYS_ADMIN in process.capabilities.bounding)",
        "ci-strict",
    );
    let all_devices =
        spec(|s| s["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]}));
    refused_by(
        agent
            .create_container("devs", &all_devices, &[], &stdio)
            .await,
        "privileged containers are not allowed (linux.resources.devices allows every device)",
        "ci-strict",
    );
    let cap =
        spec(|s| s["process"]["capabilities"]["effective"] = json!(["CAP_CHOWN", "CAP_NET_ADMIN"]));
    refused(
        agent.create_container("cap", &cap, &[], &stdio).await,
        "capability CAP_NET_ADMIN is not allowed (process.capabilities.effective)",
    );
    let bind = spec(
        |s| s["mounts"] = json!([{"destination": "/host-etc", "type": "bind", "source": "/etc", "options": ["rbind", "ro"]}]),
    );
    refused(
        agent.create_container("bind", &bind, &[], &stdio).await,
        "bind mount source \"/etc\" is not allowed",
    );
    let ramfs =
        spec(|s| s["mounts"] = json!([{"destination": "/r", "type": "ramfs", "source": "none"}]));
    refused(
        agent.create_container("ramfs", &ramfs, &[], &stdio).await,
        "mount type \"ramfs\" is not allowed (mount on /r)",
    );
    let no_seccomp = spec(|s| {
        s["linux"].as_object_mut().expect("linux").remove("seccomp");
    });
    refused(
        agent
            .create_container("nosec", &no_seccomp, &[], &stdio)
            .await,
        "a seccomp profile is required (linux.seccomp is missing)",
    );
    let process: oci_spec::runtime::Process =
        serde_json::from_value(json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}))
            .expect("an OCI process");
    refused(
        agent.exec_process("any", "e1", &process, &stdio).await,
        "exec is not allowed",
    );

    // The policy is sealed: a second one, however loose, is refused...
    let e = agent
        .create_sandbox("policy-pod", "", &[], false, Some("name = \"open\"\n"))
        .await
        .expect_err("a second policy")
        .to_string();
    assert!(
        e.contains("PERMISSION_DENIED") || e.contains("PermissionDenied"),
        "{e}"
    );
    assert!(
        e.contains("the policy is sealed (policy \"ci-strict\")"),
        "{e}"
    );
    // ...and the strict one still holds.
    let cap = spec(|s| s["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_MODULE"]));
    refused(
        agent.create_container("cap2", &cap, &[], &stdio).await,
        "capability CAP_SYS_MODULE is not allowed",
    );

    sandbox.destroy().await.expect("destroy");
    state.assert_nothing_left();
}
