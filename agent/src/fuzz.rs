//! Entry points for the cargo-fuzz targets in `agent/fuzz` (feature `fuzzing`). Each
//! takes raw bytes, must never panic, and creates nothing: the checks and conversions
//! run, the service never acts.

use hull_proto::{
    CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest, UpdateContainerRequest,
};
use protobuf::Message;

use crate::container::spec;
use crate::policy::check::{self, Request, State};
use crate::policy::{Policies, Policy};

const STRICT: &str = include_str!("../../guest-image/policy/strict.toml");

fn policies() -> [Policies; 2] {
    let strict = Policy::parse(STRICT).expect("strict policy parses");
    [
        Policies::builtin().expect("default policy parses"),
        Policies::new(strict),
    ]
}

/// Target `agent_requests`: the first byte picks the request type, the rest is its
/// protobuf encoding; a request that decodes goes through the validation the service
/// does first (ids, storages, specs, processes, sysctls) and through the policy check
/// under the default and the strict policy, before and after sealing.
pub fn agent_requests(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let state = State {
        containers: usize::from(kind >> 4),
    };
    match kind & 0x3 {
        0 => {
            let Ok(r) = CreateSandboxRequest::parse_from_bytes(bytes) else {
                return;
            };
            for s in &r.storages {
                let _ = crate::storage::plan(s);
            }
            let _ = Policy::parse(&r.policy);
            admit_all(Request::CreateSandbox(&r), state);
        }
        1 => {
            let Ok(r) = CreateContainerRequest::parse_from_bytes(bytes) else {
                return;
            };
            let _ = spec::validate_id("container id", &r.container_id);
            for n in &r.sandbox_namespaces {
                let _ = spec::sandbox_namespace(n);
            }
            for s in &r.storages {
                let _ = crate::storage::plan(s);
            }
            if let Ok(mut s) = spec::parse_spec(&r.oci_spec_json, "fuzz") {
                let _ = spec::join_namespaces(
                    &mut s,
                    42,
                    &[oci_spec::runtime::LinuxNamespaceType::Pid],
                );
                let _ = crate::container::sysctl::take_vm_net_sysctls(&mut s);
            }
            admit_all(Request::CreateContainer(&r), state);
        }
        2 => {
            let Ok(r) = ExecProcessRequest::parse_from_bytes(bytes) else {
                return;
            };
            let _ = spec::validate_id("exec id", &r.exec_id);
            let _ = spec::parse_process(&r.process_json);
            admit_all(Request::ExecProcess(&r), state);
        }
        _ => {
            let Ok(r) = UpdateContainerRequest::parse_from_bytes(bytes) else {
                return;
            };
            admit_all(Request::UpdateContainer(&r), state);
        }
    }
}

fn admit_all(req: Request<'_>, state: State) {
    for p in policies() {
        let _ = check::admit(&p, req, state);
        let _ = p.seal(None);
        let _ = check::admit(&p, req, state);
    }
}

/// Target `oci_spec`: bytes as a runtime spec JSON through what the agent does with
/// it before libcontainer sees it: parse, validate, adapt to the guest, join a pod's
/// namespaces, take out the pod's network sysctls, and the policy's spec checks; then the process JSON path of ExecProcess.
pub fn oci_spec(data: &[u8]) {
    if let Ok(mut s) = spec::parse_spec(data, "fuzz-ctr") {
        let _ = spec::wants_terminal(&s);
        // What the agent writes as the bundle's config.json must read back.
        let json = serde_json::to_vec(&s).expect("a parsed spec serialises");
        spec::parse_spec(&json, "fuzz-ctr").expect("the agent's own spec parses again");
        let types = [
            oci_spec::runtime::LinuxNamespaceType::Ipc,
            oci_spec::runtime::LinuxNamespaceType::Uts,
            oci_spec::runtime::LinuxNamespaceType::Pid,
        ];
        let _ = spec::join_namespaces(&mut s, 7, &types);
        // The network sysctls the agent would set itself: checked, never written.
        if let Ok(taken) = crate::container::sysctl::take_vm_net_sysctls(&mut s) {
            assert!(
                taken.iter().all(|t| t.path.starts_with("/proc/sys/net")),
                "a taken sysctl stays under /proc/sys/net"
            );
        }
    }
    let _ = spec::parse_process(data);
    let mut req = CreateContainerRequest::new();
    req.container_id = "fuzz-ctr".into();
    req.oci_spec_json = data.to_vec();
    for p in policies() {
        let _ = check::admit(&p, Request::CreateContainer(&req), State::default());
    }
}
