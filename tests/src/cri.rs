//! The CRI side of the containerd tests: images for pods (the demo image, and a pause
//! image made from it with umoci: no registry), imported into containerd's `k8s.io`
//! namespace, and a CRI client (k8s-cri's v1 API over containerd's socket, with tonic)
//! whose calls fail the test instead of hanging it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ImageSpec, ImageStatusRequest};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{Containerd, Release};

/// The runtime handler (RuntimeClass handler) hull is registered as.
pub const HANDLER: &str = "hull";
/// The demo image (busybox, Cmd `sh`) under a name CRI does not normalise to docker.io.
pub const IMAGE: &str = "localhost/hull/demo:latest";
/// The pods' sandbox image: the demo image running `sleep` for ever.
pub const PAUSE_IMAGE: &str = "localhost/hull/pause:latest";
/// The namespace CRI keeps its images and containers in.
pub const NAMESPACE: &str = "k8s.io";

/// How long one CRI call may take before the test fails (a VM boot under TCG takes a
/// few seconds; this only turns a hang into a failure).
const CALL_LIMIT: Duration = Duration::from_secs(180);

/// What the CRI tests need on top of the containerd tests'.
pub fn prerequisites() -> Result<(), String> {
    crate::containerd::prerequisites()?;
    crate::cni::prerequisites()?;
    if hull_runtime::host::find_binary(Path::new("umoci")).is_none() {
        return Err("missing umoci, which makes the pause image (apt-get install umoci)".into());
    }
    Ok(())
}

/// What a CRI test on containerd `major`.x (a [`Release`] unpacked by
/// scripts/containerd-versions, not the host's containerd) needs: the VM parts, the
/// shim, CNI, umoci and the release; the release, or why the test cannot run.
pub fn prerequisites_on(major: u32) -> Result<Release, String> {
    crate::run_prerequisites()?;
    crate::cni::prerequisites()?;
    if hull_runtime::host::find_binary(Path::new("umoci")).is_none() {
        return Err("missing umoci, which makes the pause image (apt-get install umoci)".into());
    }
    let shim = crate::target_bin("containerd-shim-hull-v2");
    if !shim.exists() {
        return Err(format!(
            "missing {} (cargo build --workspace --bins)",
            shim.display()
        ));
    }
    Release::find(major)
}

/// Like `require_run`, for the CRI tests.
pub fn require_cri(test: &str) -> bool {
    crate::require(test, prerequisites())
}

/// An OCI layout in `dir` holding the pause image: the demo image with Entrypoint
/// `sleep 2147483647` (a sandbox container has no stdin, so the demo's `sh` would end
/// at once). umoci writes the new config and manifest; the layers are the demo's.
pub fn pause_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("pause-layout");
    let st = Command::new("cp")
        .arg("-a")
        .arg(crate::demo_image())
        .arg(&layout)
        .status()
        .expect("cp");
    assert!(st.success(), "copying the demo image failed");
    let image = format!("{}:latest", layout.display());
    let out = Command::new("umoci")
        .args([
            "config",
            "--image",
            &image,
            "--config.entrypoint",
            "/bin/sleep",
            "--config.cmd",
            "2147483647",
        ])
        .output()
        .expect("umoci");
    assert!(
        out.status.success(),
        "umoci config: {}",
        crate::output_text(&out)
    );
    layout
}

/// Imports the demo and pause images into `k8s.io`.
pub fn import_images(c: &Containerd) {
    let tmp = tempfile::Builder::new()
        .prefix("hull-pause-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let pause = pause_layout(tmp.path());
    let base = |r: &str| {
        r.rsplit_once(':')
            .map(|(b, _)| b.to_string())
            .expect("tagged reference")
    };
    c.import(NAMESPACE, &pause, &base(PAUSE_IMAGE));
    c.import(NAMESPACE, &crate::demo_image(), &base(IMAGE));
}

/// `f`, or a panic naming `what` if it does not finish within [`CALL_LIMIT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {CALL_LIMIT:?}"),
    }
}

/// A CRI client on containerd's socket.
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(socket: &Path) -> Cri {
        let socket = socket.to_path_buf();
        // The URI is required by tonic and ignored by the connector.
        let channel = Endpoint::try_from("http://[::]:50051")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .expect("connect to containerd's CRI socket");
        Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// Waits until CRI's image store knows `image` (it learns of an import through
    /// containerd's events, asynchronously). A pod whose sandbox image CRI does not know
    /// yet would be pulled, which fails offline.
    pub async fn wait_for_image(&mut self, image: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let req = ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            };
            let status = within("ImageStatus", self.images.image_status(req))
                .await
                .unwrap_or_else(|e| panic!("ImageStatus {image}: {e}"));
            if status.into_inner().image.is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "CRI never listed the imported image {image}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// RunPodSandbox of `config` with runtime handler `handler`; the pod's id.
pub async fn run_pod(
    cri: &mut Cri,
    config: &k8s_cri::v1::PodSandboxConfig,
    handler: &str,
) -> String {
    std::fs::create_dir_all(&config.log_directory).expect("pod log dir");
    let req = k8s_cri::v1::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.to_string(),
    };
    within("RunPodSandbox", cri.runtime.run_pod_sandbox(req))
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}"))
        .into_inner()
        .pod_sandbox_id
}

/// Creates and starts container `name` of the demo image in `pod`, running
/// `sh -c script`, with `linux` (security context, ...) if given; its id.
pub async fn start_container(
    cri: &mut Cri,
    pod: &str,
    config: &k8s_cri::v1::PodSandboxConfig,
    name: &str,
    script: &str,
    linux: Option<k8s_cri::v1::LinuxContainerConfig>,
) -> String {
    start_container_of(cri, pod, config, IMAGE, name, script, linux).await
}

/// [`start_container`] of `image`.
pub async fn start_container_of(
    cri: &mut Cri,
    pod: &str,
    config: &k8s_cri::v1::PodSandboxConfig,
    image: &str,
    name: &str,
    script: &str,
    linux: Option<k8s_cri::v1::LinuxContainerConfig>,
) -> String {
    use k8s_cri::v1::{
        ContainerConfig, ContainerMetadata, CreateContainerRequest, StartContainerRequest,
    };
    let req = CreateContainerRequest {
        pod_sandbox_id: pod.to_string(),
        config: Some(ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script.to_string()],
            log_path: format!("{name}.log"),
            linux,
            ..Default::default()
        }),
        sandbox_config: Some(config.clone()),
    };
    let id = within("CreateContainer", cri.runtime.create_container(req))
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
        .into_inner()
        .container_id;
    within(
        "StartContainer",
        cri.runtime.start_container(StartContainerRequest {
            container_id: id.clone(),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
    id
}

/// A pod named `name` as kubelet asks for one: its own network and IPC namespaces, a
/// PID namespace per container, logs under `logs/<name>`.
pub fn pod_config(name: &str, logs: &Path) -> k8s_cri::v1::PodSandboxConfig {
    use k8s_cri::v1::{
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
        PodSandboxConfig, PodSandboxMetadata,
    };
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: logs.join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A temp dir for pods' logs.
pub fn logs_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hull-cri-logs-")
        .tempdir_in("/tmp")
        .expect("log dir")
}

/// The status of container `id` once it has exited (bounded wait).
pub async fn wait_exited(cri: &mut Cri, id: &str) -> k8s_cri::v1::ContainerStatus {
    use k8s_cri::v1::{ContainerState, ContainerStatusRequest};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = within(
            "ContainerStatus",
            cri.runtime.container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
        .into_inner()
        .status
        .expect("status");
        if status.state == ContainerState::ContainerExited as i32 {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "container {id} did not exit: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The streaming URL of `kubectl exec -it ID sh`: a shell with a terminal and stdin.
pub async fn exec_tty_url(cri: &mut Cri, id: &str) -> String {
    within(
        "Exec",
        cri.runtime.exec(k8s_cri::v1::ExecRequest {
            container_id: id.to_string(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("Exec in {id}: {e}"))
    .into_inner()
    .url
}

/// StopPodSandbox, then RemovePodSandbox, of `pod`; each must succeed.
pub async fn stop_and_remove_pod(cri: &mut Cri, pod: &str) {
    use k8s_cri::v1::{RemovePodSandboxRequest, StopPodSandboxRequest};
    within(
        "StopPodSandbox",
        cri.runtime.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox {pod}: {e}"));
    within(
        "RemovePodSandbox",
        cri.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox {pod}: {e}"));
}

/// ExecSync of `sh -c script` in container `id`: its stdout; the exit must be 0.
pub async fn exec(cri: &mut Cri, id: &str, script: &str) -> String {
    let req = k8s_cri::v1::ExecSyncRequest {
        container_id: id.to_string(),
        cmd: vec!["sh".into(), "-c".into(), script.to_string()],
        timeout: 120,
    };
    let out = within("ExecSync", cri.runtime.exec_sync(req))
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?} in {id}: {e}"))
        .into_inner();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.exit_code,
        0,
        "ExecSync {script:?} in {id}: stdout {stdout:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
