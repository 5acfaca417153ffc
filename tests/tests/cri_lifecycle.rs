//! A pod's life as a kubelet drives it (issue 18, item 6), on runc and on hull side by
//! side, through containerd's CRI plugin (on each containerd of the run:
//! `HULL_TEST_CONTAINERD`): the image pulled from a local registry (Debian's
//! docker-registry), RunPodSandbox with resources and overhead, create and start, exec,
//! exec with a terminal, attach, port-forward, logs, a container OOM-killed, stop and
//! remove. Every step's answer, reduced to what kubelet looks at, must be the same on
//! both runtimes; where hull differs by design (the kernel: the pod is a VM) the test
//! says so and checks hull's own answer.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hull_tests::containerd::Containerd;
use hull_tests::cri::{self, within, Cri, HANDLER, PAUSE_IMAGE};
use hull_tests::kube_stream;
use k8s_cri::v1::{
    AttachRequest, ExecSyncRequest, ImageSpec, LinuxContainerConfig, LinuxContainerResources,
    PodSandboxConfig, PodSandboxState, PodSandboxStatusRequest, PortForwardRequest,
    PullImageRequest, RemovePodSandboxRequest, StopPodSandboxRequest,
};

const MIB: i64 = 1024 * 1024;
const ECHO_PORT: u16 = 8080;

/// Debian's docker-registry on a free port of 127.0.0.1, storing in a temp dir;
/// stopped on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("hull-registry-")
            .tempdir_in("/tmp")
            .expect("registry dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        let registry = Registry {
            child,
            addr,
            _dir: dir,
        };
        hull_tests::wait_for("the registry", Duration::from_secs(30), || {
            http_status(&registry.addr, "/v2/").filter(|s| *s == 200)
        });
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of `GET path` at `addr`.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.split_whitespace().nth(1)?.parse().ok()
}

/// What kubelet sends for a pod whose containers ask 256 MiB and half a CPU, under a
/// RuntimeClass with an overhead.
fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    let mut config = cri::pod_config(name, logs);
    if let Some(linux) = config.linux.as_mut() {
        linux.resources = Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 256 * MIB,
            ..Default::default()
        });
        linux.overhead = Some(LinuxContainerResources {
            memory_limit_in_bytes: 192 * MIB,
            ..Default::default()
        });
    }
    config
}

/// Resources that limit a container's memory to `bytes`.
fn memory_limit(bytes: i64) -> Option<LinuxContainerConfig> {
    Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: bytes,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Everything kubelet would look at in one pod's life on `handler`, step by step.
async fn lifecycle(
    cri: &mut Cri,
    handler: &str,
    image: &str,
    logs: &Path,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let mut note = |step: &str, what: String| seen.push((step.to_string(), what));
    let config = pod_config(&format!("life-{handler}"), logs);
    let pod = cri::run_pod(cri, &config, handler).await;
    let state = within(
        "PodSandboxStatus",
        cri.runtime.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        }),
    )
    .await
    .expect("PodSandboxStatus")
    .into_inner()
    .status
    .map(|s| s.state == PodSandboxState::SandboxReady as i32);
    note("pod ready", format!("{state:?}"));

    let app = cri::start_container_of(
        cri,
        &pod,
        &config,
        image,
        "app",
        "echo started; nc -ll -p 8080 -e cat & i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
        memory_limit(128 * MIB),
    )
    .await;

    // ExecSync: output and exit code.
    let out = within(
        "ExecSync",
        cri.runtime.exec_sync(ExecSyncRequest {
            container_id: app.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo exec-ok; id -u; exit 3".into(),
            ],
            timeout: 60,
        }),
    )
    .await
    .expect("ExecSync")
    .into_inner();
    note(
        "exec",
        format!(
            "{:?} exit {}",
            String::from_utf8_lossy(&out.stdout),
            out.exit_code
        ),
    );

    // Exec with a terminal and stdin (`kubectl exec -it`).
    let url = cri::exec_tty_url(cri, &app).await;
    let s = tokio::task::spawn_blocking(move || {
        kube_stream::session(&url, Some(b"echo $((6*7)); exit 0\n"), |_| false)
    })
    .await
    .expect("exec -it");
    note(
        "exec -it",
        format!(
            "answer {} status {:?}",
            s.stdout_text().contains("42\r\n"),
            s.status.as_deref().map(|j| j.contains("\"Success\""))
        ),
    );

    // Attach (`kubectl attach`): the running container's output.
    let url = within(
        "Attach",
        cri.runtime.attach(AttachRequest {
            container_id: app.clone(),
            stdin: false,
            tty: false,
            stdout: true,
            stderr: true,
        }),
    )
    .await
    .expect("Attach")
    .into_inner()
    .url;
    let s = tokio::task::spawn_blocking(move || {
        kube_stream::session(&url, None, |s| s.stdout_text().matches("tick").count() >= 2)
    })
    .await
    .expect("attach");
    note(
        "attach",
        format!("ticks {}", s.stdout_text().matches("tick").count() >= 2),
    );

    // Port-forward (`kubectl port-forward`) to the echo server.
    let url = within(
        "PortForward",
        cri.runtime.port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![i32::from(ECHO_PORT)],
        }),
    )
    .await
    .expect("PortForward")
    .into_inner()
    .url;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let sent = data.clone();
    let back =
        tokio::task::spawn_blocking(move || kube_stream::port_forward_echo(&url, ECHO_PORT, &sent))
            .await
            .expect("port-forward");
    note("port-forward", format!("echoed {}", back == data));

    // Logs, in CRI's format.
    let log = PathBuf::from(&config.log_directory).join("app.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    note(
        "logs",
        format!(
            "started {} tick {}",
            text.contains(" stdout F started"),
            text.contains(" stdout F tick 0")
        ),
    );

    // A container over its memory limit.
    let hog = cri::start_container_of(
        cri,
        &pod,
        &config,
        image,
        "hog",
        // As cri_kubelet.rs's OOM test: busybox tail keeps a line that never ends and
        // grows until the limit. (A shell variable grown by command substitution can
        // instead thrash on the busybox text it evicts before the kernel gives up.)
        "exec tail /dev/zero",
        memory_limit(32 * MIB),
    )
    .await;
    let status = cri::wait_exited(cri, &hog).await;
    note(
        "oom",
        format!("exit {} reason {}", status.exit_code, status.reason),
    );

    within(
        "StopPodSandbox",
        cri.runtime.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await
    .expect("StopPodSandbox");
    let status = cri::wait_exited(cri, &app).await;
    note("stopped", format!("app exit {}", status.exit_code));
    within(
        "RemovePodSandbox",
        cri.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await
    .expect("RemovePodSandbox");
    seen
}

#[test]
fn a_pods_life_as_a_kubelet_drives_it_is_the_same_on_runc_and_hull() {
    if !cri::require_cri("a_pods_life_as_a_kubelet_drives_it_is_the_same_on_runc_and_hull") {
        return;
    }
    if hull_runtime::host::find_binary(Path::new("docker-registry")).is_none() {
        hull_tests::require(
            "a_pods_life_as_a_kubelet_drives_it_is_the_same_on_runc_and_hull",
            Err("missing docker-registry (apt-get install docker-registry)".into()),
        );
        return;
    }
    let registry = Registry::start();
    let c = Containerd::start_cri(PAUSE_IMAGE);
    cri::import_images(&c);
    // The demo image into the registry, then gone from containerd: the pods pull it.
    let image = format!("{}/hull/demo:v1", registry.addr);
    let ctr_ok = |args: &[&str]| {
        let out = c.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            hull_tests::output_text(&out)
        );
    };
    ctr_ok(&["-n", cri::NAMESPACE, "images", "tag", cri::IMAGE, &image]);
    ctr_ok(&[
        "-n",
        cri::NAMESPACE,
        "images",
        "push",
        "--plain-http",
        &image,
    ]);
    ctr_ok(&["-n", cri::NAMESPACE, "images", "rm", &image]);

    let logs = tempfile::Builder::new()
        .prefix("hull-life-logs-")
        .tempdir_in("/tmp")
        .expect("logs");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (on_runc, on_hull) = rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        within(
            "PullImage",
            cri.images.pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("PullImage {image} from the local registry: {e}"));
        let on_runc = lifecycle(&mut cri, "runc", &image, logs.path()).await;
        let on_hull = lifecycle(&mut cri, HANDLER, &image, logs.path()).await;
        (on_runc, on_hull)
    });
    drop(rt);
    let show = |steps: &[(String, String)]| {
        steps
            .iter()
            .map(|(s, w)| format!("  {s}: {w}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        on_runc,
        on_hull,
        "hull's answers differ from runc's\nrunc:\n{}\nhull:\n{}\n--- containerd log ---\n{}",
        show(&on_runc),
        show(&on_hull),
        c.log()
    );
    // Not vacuous: what every step must have said.
    let expected = [
        ("pod ready", "Some(true)"),
        ("exec", "\"exec-ok\\n0\\n\" exit 3"),
        ("exec -it", "answer true status Some(true)"),
        ("attach", "ticks true"),
        ("port-forward", "echoed true"),
        ("logs", "started true tick true"),
        ("oom", "exit 137 reason OOMKilled"),
        ("stopped", "app exit 137"),
    ];
    let got: Vec<(&str, &str)> = on_hull
        .iter()
        .map(|(s, w)| (s.as_str(), w.as_str()))
        .collect();
    assert_eq!(got, expected, "hull:\n{}", show(&on_hull));
    c.assert_nothing_left();
}
