//! hull under containerd 2.x as it ships: Debian's containerd 2.x (unpacked by
//! scripts/containerd-versions) with its own default config (`containerd config
//! default`), changed only where a test instance must differ (dirs, sockets, CNI,
//! sandbox image, runtime `hull`; see `Containerd::start_cri_default_config`).
//!
//! That default config enables unprivileged ports and ICMP, so containerd puts
//! `net.ipv4.ip_unprivileged_port_start` and `net.ipv4.ping_group_range` into every
//! sandbox spec; in the guest those are the pod's network's (the VM's network
//! namespace), set by the agent. The test drives one pod the way a kubelet does:
//! RunPodSandbox (CNI network), CreateContainer + StartContainer, ExecSync, the
//! container's log, the sysctls containerd asked for as the container sees them,
//! StopContainer, StopPodSandbox, RemovePodSandbox, and then nothing left: no pod, no
//! container, no VM process, shim or mount, no netns, no veth on the test's bridge.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_tests::containerd::Containerd;
use hull_tests::cri::{self, within, Cri, HANDLER, IMAGE, NAMESPACE, PAUSE_IMAGE};
use hull_tests::wait_for;
use k8s_cri::v1::{
    ContainerState, ContainerStatusRequest, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatusRequest, RemovePodSandboxRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use serde_json::Value;

const TEST: &str = "cri_pod_lifecycle_on_containerd2_with_its_default_config";

/// A pod's and its containers' namespaces as the kubelet sets them by default: the
/// pod's network and IPC, a PID namespace per container.
fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        log_directory: logs.join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The runtime spec containerd gave the shim for task `id` (its bundle's config.json).
fn bundle_spec(c: &Containerd, id: &str) -> Value {
    let path = c
        .dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id)
        .join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the bundle spec {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The network sysctls of a spec's `linux.sysctl`.
fn net_sysctls(spec: &Value) -> HashMap<String, String> {
    spec["linux"]["sysctl"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("net."))
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The host path of the pod's network namespace in a spec (CRI's netns mount).
fn netns_path(spec: &Value) -> Option<PathBuf> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .map(PathBuf::from)
}

/// Interfaces enslaved to `bridge` (the pods' veths), as `ip` lists them.
fn bridge_ports(bridge: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect()
}

#[test]
fn cri_pod_lifecycle_on_containerd2_with_its_default_config() {
    let release = match cri::prerequisites_on(2) {
        Ok(r) => r,
        Err(why) => {
            hull_tests::require(TEST, Err(why));
            return;
        }
    };
    eprintln!(
        "containerd {} from {}",
        release.version,
        release.bin_dir.display()
    );
    let c = Containerd::start_cri_default_config(&release, PAUSE_IMAGE);
    cri::import_images(&c);
    let bridge = c
        .cni
        .as_ref()
        .map(|n| n.bridge.clone())
        .expect("the test's CNI network");
    let logs = tempfile::Builder::new()
        .prefix("hull-cri2-logs-")
        .tempdir_in("/tmp")
        .expect("log dir");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let netns = rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        let version = within("Version", cri.runtime.version(VersionRequest::default()))
            .await
            .unwrap_or_else(|e| panic!("CRI Version: {e}\n--- containerd log ---\n{}", c.log()))
            .into_inner();
        assert_eq!(version.runtime_name, "containerd", "{version:?}");
        assert!(
            version.runtime_version.trim_start_matches('v').starts_with("2."),
            "containerd 2.x answers: {version:?}"
        );
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(IMAGE).await;

        let config = pod_config("hull-pod-ctd2", logs.path());
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        let status = within(
            "PodSandboxStatus",
            cri.runtime.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {pod}: {e}"))
        .into_inner()
        .status
        .expect("pod status");
        assert_eq!(status.state, PodSandboxState::SandboxReady as i32, "{status:?}");
        let ip = status.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
        let subnet = c.cni.as_ref().map(|n| n.subnet.clone()).unwrap_or_default();
        let prefix = subnet.trim_end_matches("0/24");
        assert!(ip.starts_with(prefix), "the pod's IP {ip:?} is from the test's CNI subnet {subnet}");

        // What containerd's default config put into the sandbox spec.
        let spec = bundle_spec(&c, &pod);
        let wanted = net_sysctls(&spec);
        for key in ["net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start"] {
            assert!(
                wanted.contains_key(key),
                "containerd 2.x's default config (unprivileged ICMP and ports) puts {key} into the sandbox spec: {:?}",
                spec["linux"]["sysctl"]
            );
        }
        let netns = netns_path(&spec).expect("the pod's netns path in the sandbox spec");

        let linux = LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        };
        // sh as PID 1 ends on SIGTERM only through a trap: StopContainer's SIGTERM
        // must reach it for it to say goodbye.
        let script = "echo hello from containerd2; trap 'echo bye from containerd2; exit 0' TERM; \
                      while :; do sleep 1; done";
        let app = cri::start_container(&mut cri, &pod, &config, "app", script, Some(linux)).await;
        assert_eq!(c.shims().len(), 1, "one shim (and VM) for the pod: {:?}", c.shims());

        assert_eq!(cri::exec(&mut cri, &app, "echo exec says $((6 * 7))").await, "exec says 42\n");
        // The pod's network sysctls, as the container sees them (the kernel separates
        // the two numbers of a range by a tab).
        for (key, value) in &wanted {
            let file = format!("/proc/sys/{}", key.replace('.', "/"));
            let seen = cri::exec(&mut cri, &app, &format!("cat {file}")).await;
            let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
            assert_eq!(words(&seen), words(value), "{key}: the container sees {seen:?}, containerd asked for {value:?}");
        }

        let log = Path::new(&config.log_directory).join("app.log");
        wait_for("app's output in its CRI log", Duration::from_secs(60), || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("stdout F hello from containerd2"))
        });

        within(
            "StopContainer",
            cri.runtime.stop_container(StopContainerRequest {
                container_id: app.clone(),
                timeout: 30,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("StopContainer {app}: {e}"));
        let app_status = within(
            "ContainerStatus",
            cri.runtime.container_status(ContainerStatusRequest {
                container_id: app.clone(),
                verbose: false,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {app}: {e}"))
        .into_inner()
        .status
        .expect("container status");
        assert_eq!(app_status.state, ContainerState::ContainerExited as i32, "{app_status:?}");
        assert_eq!(app_status.exit_code, 0, "the TERM trap ran: {app_status:?}");
        wait_for("app's goodbye in its CRI log", Duration::from_secs(60), || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("stdout F bye from containerd2"))
        });

        within("StopPodSandbox", cri.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }))
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox {pod}: {e}"));
        within(
            "RemovePodSandbox",
            cri.runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }),
        )
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox {pod}: {e}"));
        let pods = within("ListPodSandbox", cri.runtime.list_pod_sandbox(ListPodSandboxRequest::default()))
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        assert!(pods.is_empty(), "pods left: {pods:?}");
        let containers = within("ListContainers", cri.runtime.list_containers(ListContainersRequest::default()))
            .await
            .expect("ListContainers")
            .into_inner()
            .containers;
        assert!(containers.is_empty(), "containers left: {containers:?}");
        netns
    });
    drop(rt);
    c.assert_nothing_left();
    wait_for(
        &format!("the pod's netns {} to be gone", netns.display()),
        Duration::from_secs(10),
        || (!netns.exists()).then_some(()),
    );
    wait_for(
        "no veth left on the test's bridge",
        Duration::from_secs(10),
        || bridge_ports(&bridge).is_empty().then_some(()),
    );
}
