//! hull under Kubernetes' CRI: a real containerd 1.6 with its CRI plugin, hull as the
//! runtime handler `hull`, driven by a Rust CRI client (k8s-cri): RunPodSandbox, two
//! containers per pod (CreateContainer, StartContainer), ExecSync, ContainerStats,
//! StopPodSandbox, RemovePodSandbox, and nothing left afterwards.
//!
//! Pods get their network from CNI (NamespaceOption network=POD; a hull VM cannot
//! share the node's network: that is refused, see cri_net.rs, which tests the network
//! itself). What the test proves in the guest: the
//! containers of a pod run in one VM (same boot id) and pods in different VMs; they
//! share the sandbox (pause) container's IPC and UTS namespaces, and its PID namespace
//! when the pod shares its process namespace, but not otherwise; each has its own
//! mount namespace; their output reaches CRI's log files.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use hull_tests::containerd::Containerd;
use hull_tests::cri::{self, within, Cri, HANDLER, IMAGE, PAUSE_IMAGE};
use hull_tests::wait_for;
use k8s_cri::v1::{
    ContainerStatsRequest, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    VersionRequest,
};

/// A pod's namespaces as the kubelet sets them: the pod's network; PID shared in the
/// pod (shareProcessNamespace) or per container.
fn namespaces(share_pid: bool) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: if share_pid {
            NamespaceMode::Pod
        } else {
            NamespaceMode::Container
        } as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn pod_config(name: &str, share_pid: bool, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        // No hostname asked for: the pod's UTS namespace is the VM's, which the shim
        // names after the sandbox.
        hostname: String::new(),
        log_directory: logs.join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(share_pid)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates and starts container `name` in `pod` running `sh -c script`; its id.
async fn start_container(
    cri: &mut Cri,
    pod: &str,
    config: &PodSandboxConfig,
    name: &str,
    script: &str,
) -> String {
    let share_pid = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.pid == NamespaceMode::Pod as i32);
    let linux = LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(namespaces(share_pid)),
            ..Default::default()
        }),
        ..Default::default()
    };
    cri::start_container(cri, pod, config, name, script, Some(linux)).await
}

/// What a container sees of its guest: `key value` lines of boot id, hostname, its own
/// namespaces, PID 1's namespaces and command line.
const PROBE: &str = "echo boot_id $(cat /proc/sys/kernel/random/boot_id); echo hostname $(hostname); \
    for n in ipc uts pid mnt; do echo $n $(readlink /proc/self/ns/$n); echo pid1_$n $(readlink /proc/1/ns/$n); done; \
    echo pid1_cmd $(tr '\\0' ' ' < /proc/1/cmdline)";

async fn probe(cri: &mut Cri, id: &str) -> HashMap<String, String> {
    let text = cri::exec(cri, id, PROBE).await;
    let seen: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    for key in [
        "boot_id", "hostname", "ipc", "uts", "pid", "mnt", "pid1_cmd",
    ] {
        assert!(
            seen.get(key).is_some_and(|v| !v.is_empty()),
            "{key} missing in {id}: {text}"
        );
    }
    seen
}

#[test]
fn cri_pods_run_in_their_own_vms_and_share_the_sandbox_namespaces() {
    if !cri::require_cri("cri_pods_run_in_their_own_vms_and_share_the_sandbox_namespaces") {
        return;
    }
    let c = Containerd::start_cri(PAUSE_IMAGE);
    cri::import_images(&c);
    let logs = cri::logs_dir();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        let version = within("Version", cri.runtime.version(VersionRequest::default()))
            .await
            .unwrap_or_else(|e| panic!("CRI Version: {e}\n--- containerd log ---\n{}", c.log()))
            .into_inner();
        assert_eq!(version.runtime_name, "containerd", "{version:?}");
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(IMAGE).await;

        // Pod a shares its process namespace; pod b does not.
        let config_a = pod_config("hull-pod-a", true, logs.path());
        let config_b = pod_config("hull-pod-b", false, logs.path());
        let pod_a = cri::run_pod(&mut cri, &config_a, HANDLER).await;
        let a1 = start_container(
            &mut cri,
            &pod_a,
            &config_a,
            "a1",
            "echo hello from a1; exec sleep 100001",
        )
        .await;
        let a2 = start_container(&mut cri, &pod_a, &config_a, "a2", "exec sleep 100002").await;
        let pod_b = cri::run_pod(&mut cri, &config_b, HANDLER).await;
        let b1 = start_container(&mut cri, &pod_b, &config_b, "b1", "exec sleep 200001").await;
        let b2 = start_container(&mut cri, &pod_b, &config_b, "b2", "exec sleep 200002").await;
        assert_eq!(
            c.shims().len(),
            2,
            "one shim (and VM) per pod: {:?}",
            c.shims()
        );

        let (pa1, pa2) = (probe(&mut cri, &a1).await, probe(&mut cri, &a2).await);
        let (pb1, pb2) = (probe(&mut cri, &b1).await, probe(&mut cri, &b2).await);
        // One VM per pod.
        assert_eq!(
            pa1["boot_id"], pa2["boot_id"],
            "the containers of a pod run in its VM"
        );
        assert_eq!(
            pb1["boot_id"], pb2["boot_id"],
            "the containers of a pod run in its VM"
        );
        assert_ne!(pa1["boot_id"], pb1["boot_id"], "two pods, two VMs");
        // The pods' UTS namespace is the VM's, named after the sandbox.
        assert_eq!(pa1["hostname"], pod_a, "{pa1:?}");
        assert_eq!(pa2["hostname"], pod_a, "{pa2:?}");
        assert_eq!(pb1["hostname"], pod_b, "{pb1:?}");
        for (pod, x, y) in [("a", &pa1, &pa2), ("b", &pb1, &pb2)] {
            // IPC and UTS: the pod's, shared by its containers; mounts: each its own.
            assert_eq!(
                x["ipc"], y["ipc"],
                "pod {pod}: one IPC namespace: {x:?} {y:?}"
            );
            assert_eq!(
                x["uts"], y["uts"],
                "pod {pod}: one UTS namespace: {x:?} {y:?}"
            );
            assert_ne!(
                x["mnt"], y["mnt"],
                "pod {pod}: a mount namespace per container: {x:?} {y:?}"
            );
        }
        // Pod a: one PID namespace whose PID 1 is the sandbox (pause) container, whose
        // IPC and UTS namespaces are the ones the containers joined.
        assert_eq!(
            pa1["pid"], pa2["pid"],
            "pod a shares its PID namespace: {pa1:?} {pa2:?}"
        );
        for p in [&pa1, &pa2] {
            assert_eq!(
                p["pid1_cmd"], "/bin/sleep 2147483647",
                "PID 1 is the pause container: {p:?}"
            );
            assert_eq!(
                p["pid1_ipc"], p["ipc"],
                "the sandbox container's IPC namespace: {p:?}"
            );
            assert_eq!(
                p["pid1_uts"], p["uts"],
                "the sandbox container's UTS namespace: {p:?}"
            );
        }
        let ps = cri::exec(&mut cri, &a2, "ps").await;
        assert!(
            ps.contains("sleep 100001"),
            "a2 sees a1's process in the shared PID namespace: {ps}"
        );
        // Pod b: a PID namespace per container, each container's own init as PID 1.
        assert_ne!(
            pb1["pid"], pb2["pid"],
            "pod b does not share its PID namespace: {pb1:?} {pb2:?}"
        );
        assert_eq!(pb1["pid1_cmd"], "sleep 200001", "{pb1:?}");
        assert_eq!(pb2["pid1_cmd"], "sleep 200002", "{pb2:?}");
        let ps = cri::exec(&mut cri, &b2, "ps").await;
        assert!(
            !ps.contains("sleep 200001"),
            "b2 must not see b1's process: {ps}"
        );

        // Stats come from the container's cgroup in the guest.
        let stats = within(
            "ContainerStats",
            cri.runtime.container_stats(ContainerStatsRequest {
                container_id: a1.clone(),
            }),
        )
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
        assert_eq!(
            stats.attributes.as_ref().map(|a| a.id.as_str()),
            Some(a1.as_str()),
            "{stats:?}"
        );
        let cpu = stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds)
            .map(|v| v.value);
        assert!(cpu.is_some_and(|v| v > 0), "CPU usage: {stats:?}");
        let memory = stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value);
        assert!(
            memory.is_some_and(|v| v > 0),
            "memory working set: {stats:?}"
        );

        // Output reaches CRI's log file through the shim's FIFOs.
        let log = Path::new(&config_a.log_directory).join("a1.log");
        wait_for(
            "a1's output in its CRI log",
            Duration::from_secs(60),
            || {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|t| t.contains("stdout F hello from a1"))
            },
        );

        for pod in [&pod_a, &pod_b] {
            cri::stop_and_remove_pod(&mut cri, pod).await;
        }
        let pods = within(
            "ListPodSandbox",
            cri.runtime
                .list_pod_sandbox(ListPodSandboxRequest::default()),
        )
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
        assert!(pods.is_empty(), "pods left: {pods:?}");
        let containers = within(
            "ListContainers",
            cri.runtime
                .list_containers(ListContainersRequest::default()),
        )
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
        assert!(containers.is_empty(), "containers left: {containers:?}");
    });
    drop(rt);
    c.assert_nothing_left();
}
