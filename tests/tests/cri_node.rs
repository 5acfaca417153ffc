//! hull as a node sees it through containerd 1.6's CRI plugin (issue 15):
//!
//! - set-up as docs/containerd-and-kubernetes.md gives it: `hull install-containerd` run against a containerd
//!   config (containerd's own `containerd config default`) and a hull config path that
//!   does not exist yet; containerd started from exactly the config it wrote (only the
//!   test instance's root, state, socket and CNI dirs changed) runs a hull pod, through
//!   the CRI runtime handler `hull` (which passes hull's config file as `ConfigPath`),
//!   and `ctr run --runtime io.containerd.hull.v2`;
//! - volumes: a host dir with a tmpfs mounted below it reaches the container whole
//!   (writable, or read-only throughout with readonly); HostToContainer (rslave)
//!   volumes run and receive what the host mounts later, private ones do not;
//!   Bidirectional (rshared) is refused naming the volume; every mount is undone and
//!   the host's own mounts stay;
//! - the node's IPC namespace (hostIPC) is refused before any VM process starts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_tests::containerd::{Containerd, IMAGE as CTR_IMAGE, RUNTIME};
use hull_tests::cri::{self, within, Cri, HANDLER, IMAGE, PAUSE_IMAGE};
use hull_tests::{output_text, wait_for};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, Mount, MountPropagation, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RunPodSandboxRequest, StartContainerRequest,
};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

fn namespaces(ipc: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: ipc as i32,
        ..Default::default()
    }
}

fn pod_config(name: &str, logs: &Path, ipc: NamespaceMode) -> PodSandboxConfig {
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
                namespace_options: Some(namespaces(ipc)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// CreateContainer of `name` (demo image, `sh -c script`) with `mounts` in `pod`.
async fn create_container(
    cri: &mut Cri,
    pod: &str,
    config: &PodSandboxConfig,
    name: &str,
    script: &str,
    mounts: Vec<Mount>,
) -> Result<String, tonic::Status> {
    let req = CreateContainerRequest {
        pod_sandbox_id: pod.to_string(),
        config: Some(ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.to_string(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script.to_string()],
            log_path: format!("{name}.log"),
            mounts,
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces(NamespaceMode::Pod)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        sandbox_config: Some(config.clone()),
    };
    within("CreateContainer", cri.runtime.create_container(req))
        .await
        .map(|r| r.into_inner().container_id)
}

/// Creates and starts `name`; its id. The start must succeed.
async fn start_container(
    cri: &mut Cri,
    pod: &str,
    config: &PodSandboxConfig,
    name: &str,
    script: &str,
    mounts: Vec<Mount>,
) -> String {
    let id = create_container(cri, pod, config, name, script, mounts)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
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

/// ExecSync of `sh -c script` in `id`: (exit code, stdout + stderr).
async fn exec_any(cri: &mut Cri, id: &str, script: &str) -> (i32, String) {
    let req = k8s_cri::v1::ExecSyncRequest {
        container_id: id.to_string(),
        cmd: vec!["sh".into(), "-c".into(), script.to_string()],
        timeout: 120,
    };
    let out = within("ExecSync", cri.runtime.exec_sync(req))
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?} in {id}: {e}"))
        .into_inner();
    (
        out.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn assert_no_pods(cri: &mut Cri) {
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
}

fn get<'a>(doc: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
    path.iter().try_fold(doc, |t, k| t.get(*k))
}

/// The lines `edited` has beyond `original`, if `original`'s lines are all in it, in
/// order and unchanged (comments, quoting and layout kept); else the first line lost.
fn lines_added<'a>(original: &str, edited: &'a str) -> Result<Vec<&'a str>, String> {
    let mut want = original.lines().peekable();
    let mut added = Vec::new();
    for line in edited.lines() {
        if want.peek() == Some(&line) {
            want.next();
        } else {
            added.push(line);
        }
    }
    match want.next() {
        None => Ok(added),
        Some(lost) => Err(lost.to_string()),
    }
}

#[test]
fn the_readme_set_up_runs_hull_pods() {
    if !cri::require_cri("the_readme_set_up_runs_hull_pods") {
        return;
    }
    // containerd's own default config, as a node has it, and no hull config yet: the
    // containerd of this run's series (`$HULL_TEST_CONTAINERD`; version 2 on 1.x,
    // version 3 on 2.x).
    let release = hull_tests::containerd::selected_release();
    let default = hull_tests::containerd::default_config_text(release.as_ref());
    let etc = tempfile::Builder::new()
        .prefix("hull-etc-")
        .tempdir_in("/tmp")
        .expect("etc");
    let ctd_config = etc.path().join("containerd/config.toml");
    let hull_config = etc.path().join("hull/config.toml");
    std::fs::create_dir_all(ctd_config.parent().expect("dir")).expect("mkdir");
    std::fs::write(&ctd_config, &default).expect("write");

    let hull = |args: &[&str]| {
        let out = Command::new(hull_tests::hull_bin())
            .arg("install-containerd")
            .arg("--containerd-config")
            .arg(&ctd_config)
            .arg("--hull-config")
            .arg(&hull_config)
            .args(args)
            .output()
            .expect("hull install-containerd");
        assert!(out.status.success(), "{}", output_text(&out));
        out
    };
    hull(&[]);
    let generated = std::fs::read_to_string(&ctd_config).expect("generated config");
    // Edited, not rewritten: every line of the default is there as it was.
    let added = lines_added(&default, &generated)
        .unwrap_or_else(|lost| panic!("the edit lost the line {lost:?}:\n{generated}"));
    assert!(
        added.iter().all(|l| l.trim().is_empty()
            || l.contains("hull")
            || l.trim_start().starts_with("runtime_type")
            || l.trim_start().starts_with("ConfigPath")),
        "lines added beyond hull's runtime: {added:?}"
    );
    let doc: toml::Value = toml::from_str(&generated).expect("valid TOML");
    let version = doc.get("version").and_then(toml::Value::as_integer);
    let (runtime_plugin, sandbox_image_at): (&str, &[&str]) = match version {
        Some(2) => (
            "io.containerd.grpc.v1.cri",
            &["plugins", "io.containerd.grpc.v1.cri", "sandbox_image"],
        ),
        Some(3) => (
            "io.containerd.cri.v1.runtime",
            &[
                "plugins",
                "io.containerd.cri.v1.images",
                "pinned_images",
                "sandbox",
            ],
        ),
        v => panic!("containerd's default config has version {v:?}"),
    };
    let runtime = get(
        &doc,
        &["plugins", runtime_plugin, "containerd", "runtimes", "hull"],
    )
    .expect("hull runtime");
    assert_eq!(
        runtime["runtime_type"].as_str(),
        Some(RUNTIME),
        "{generated}"
    );
    assert_eq!(
        runtime["options"]["ConfigPath"].as_str(),
        hull_config.to_str(),
        "{generated}"
    );
    let sandbox_image = get(&doc, sandbox_image_at)
        .and_then(toml::Value::as_str)
        .expect("sandbox image")
        .to_string();
    let c = Containerd::start_from_config(|inst, cni| {
        let mut doc: toml::Table = generated.parse().expect("TOML");
        hull_tests::containerd::adapt_to_instance(&mut doc, inst, cni);
        toml::to_string(&doc).expect("TOML")
    });
    // The images: nothing is pulled; the config's sandbox image is the test's pause.
    cri::import_images(&c);
    let out = c.ctr(&[
        "-n",
        cri::NAMESPACE,
        "images",
        "tag",
        PAUSE_IMAGE,
        &sandbox_image,
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    c.import("default", &hull_tests::demo_image(), "demo");

    // `ctr run`, as docs/containerd-and-kubernetes.md shows it.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        CTR_IMAGE,
        "readme1",
        "echo",
        "hi from ctr",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- containerd log ---\n{}",
        output_text(&out),
        c.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi from ctr\n",
        "{}",
        output_text(&out)
    );

    // A pod with the RuntimeClass handler `hull`: the runtime's ConfigPath is used.
    let logs = cri::logs_dir();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(&sandbox_image).await;
        cri.wait_for_image(IMAGE).await;
        let config = pod_config("hull-readme", logs.path(), NamespaceMode::Pod);
        std::fs::create_dir_all(&config.log_directory).expect("pod log dir");
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: HANDLER.to_string(),
        };
        let pod = within("RunPodSandbox", cri.runtime.run_pod_sandbox(req))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RunPodSandbox with the installed config: {e}\n--- containerd log ---\n{}",
                    c.log()
                )
            })
            .into_inner()
            .pod_sandbox_id;
        start_container(
            &mut cri,
            &pod,
            &config,
            "hello",
            "echo hello from the installed config; exec sleep 100000",
            vec![],
        )
        .await;
        let log = Path::new(&config.log_directory).join("hello.log");
        wait_for(
            "the container's output in its CRI log",
            Duration::from_secs(60),
            || {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|t| t.contains("stdout F hello from the installed config"))
            },
        );
        cri::stop_and_remove_pod(&mut cri, &pod).await;
        assert_no_pods(&mut cri).await;
    });
    drop(rt);
    c.assert_nothing_left();

    // Run again: nothing changes, and an edited hull config is kept.
    let text = std::fs::read_to_string(&hull_config).expect("hull's config file was written");
    std::fs::write(&hull_config, format!("{text}\n# edited\n")).expect("edit");
    let again = hull(&[]);
    assert_eq!(
        std::fs::read_to_string(&ctd_config).expect("config"),
        generated,
        "{}",
        output_text(&again)
    );
    assert!(std::fs::read_to_string(&hull_config)
        .expect("hull config")
        .ends_with("# edited\n"));
}

/// A dir bind-mounted on itself with shared propagation (as `/` is under systemd, and
/// as containerd wants the source of a HostToContainer volume), holding the volume
/// `vol` with a tmpfs at `vol/sub` (file `f`) and an empty `vol/later`. Dropping it
/// unmounts everything below it.
struct HostDir {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl HostDir {
    fn new() -> HostDir {
        let dir = tempfile::Builder::new()
            .prefix("hull-vol-")
            .tempdir_in("/tmp")
            .expect("tmp");
        let root = dir.path().to_path_buf();
        let hd = HostDir { _dir: dir, root };
        mount(
            Some(&hd.root),
            &hd.root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        mount(
            None::<&str>,
            &hd.root,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("private");
        mount(
            None::<&str>,
            &hd.root,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("shared");
        std::fs::create_dir_all(hd.vol().join("sub")).expect("sub");
        std::fs::create_dir_all(hd.vol().join("later")).expect("later");
        tmpfs(&hd.vol().join("sub"));
        std::fs::write(hd.vol().join("sub/f"), "on the tmpfs\n").expect("f");
        hd
    }

    fn vol(&self) -> PathBuf {
        self.root.join("vol")
    }

    fn mounts(&self) -> Vec<PathBuf> {
        let mut m = hull_runtime::sandbox::share::mounts_under(&self.root);
        m.sort();
        m
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        for m in hull_runtime::sandbox::share::mounts_under(&self.root) {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
}

fn tmpfs(at: &Path) {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("tmpfs");
}

fn volume(host: &Path, readonly: bool, propagation: MountPropagation) -> Vec<Mount> {
    vec![Mount {
        container_path: "/v".into(),
        host_path: host.display().to_string(),
        readonly,
        propagation: propagation as i32,
        ..Default::default()
    }]
}

#[test]
fn volumes_bring_their_submounts_and_keep_what_propagation_can_cross() {
    if !cri::require_cri("volumes_bring_their_submounts_and_keep_what_propagation_can_cross") {
        return;
    }
    let host = HostDir::new();
    let vol = host.vol();
    let host_mounts = host.mounts();
    let c = Containerd::start_cri(PAUSE_IMAGE);
    cri::import_images(&c);
    let logs = cri::logs_dir();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(IMAGE).await;
        let config = pod_config("hull-volumes", logs.path(), NamespaceMode::Pod);
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        let sleep = "exec sleep 100000";

        // Private, writable: the tmpfs below the host dir is the volume's, writable.
        let rw = start_container(
            &mut cri,
            &pod,
            &config,
            "rw",
            sleep,
            volume(&vol, false, MountPropagation::PropagationPrivate),
        )
        .await;
        let (code, out) = exec_any(
            &mut cri,
            &rw,
            "cat /v/sub/f && echo from-rw > /v/sub/x && echo written",
        )
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "on the tmpfs\nwritten\n"),
            "the tmpfs under the volume, writable"
        );
        assert_eq!(
            std::fs::read_to_string(vol.join("sub/x")).expect("on the host's tmpfs"),
            "from-rw\n"
        );

        // Read-only: read-only below too.
        let ro = start_container(
            &mut cri,
            &pod,
            &config,
            "ro",
            sleep,
            volume(&vol, true, MountPropagation::PropagationPrivate),
        )
        .await;
        let (code, out) = exec_any(&mut cri, &ro, "cat /v/sub/f").await;
        assert_eq!((code, out.as_str()), (0, "on the tmpfs\n"));
        for path in ["/v/sub/y", "/v/y"] {
            let (code, out) = exec_any(&mut cri, &ro, &format!("touch {path}")).await;
            assert!(
                code != 0 && out.contains("Read-only file system"),
                "touch {path} in a read-only volume: {code} {out}"
            );
        }
        assert!(!vol.join("sub/y").exists() && !vol.join("y").exists());

        // HostToContainer (rslave): runs, sees the tmpfs, and what the host mounts
        // afterwards; the private volume does not.
        let slave = start_container(
            &mut cri,
            &pod,
            &config,
            "slave",
            sleep,
            volume(&vol, false, MountPropagation::PropagationHostToContainer),
        )
        .await;
        let (code, out) = exec_any(&mut cri, &slave, "cat /v/sub/f").await;
        assert_eq!((code, out.as_str()), (0, "on the tmpfs\n"));
        tmpfs(&vol.join("later"));
        std::fs::write(vol.join("later/new"), "mounted later\n").expect("new");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (code, out) = exec_any(&mut cri, &slave, "cat /v/later/new").await;
            if code == 0 {
                assert_eq!(out, "mounted later\n");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the host's later mount never reached the rslave volume: {out}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (code, out) =
            exec_any(&mut cri, &slave, "echo from-slave > /v/later/w && echo ok").await;
        assert_eq!((code, out.as_str()), (0, "ok\n"));
        assert_eq!(
            std::fs::read_to_string(vol.join("later/w")).expect("on the later tmpfs"),
            "from-slave\n"
        );
        let (_, out) = exec_any(&mut cri, &rw, "ls -A /v/later").await;
        assert_eq!(
            out, "",
            "a private volume must not receive the host's later mounts"
        );

        // Bidirectional (rshared): refused, naming the volume and why, when the
        // runtime first sees the container (CRI's StartContainer creates the task).
        let shared = create_container(
            &mut cri,
            &pod,
            &config,
            "shared",
            sleep,
            volume(&vol, false, MountPropagation::PropagationBidirectional),
        )
        .await
        .unwrap_or_else(|e| panic!("CreateContainer (CRI metadata only): {e}"));
        let e = within(
            "StartContainer",
            cri.runtime.start_container(StartContainerRequest {
                container_id: shared.clone(),
            }),
        )
        .await
        .expect_err("a Bidirectional volume must be refused");
        let msg = e.message();
        assert!(
            msg.contains(&vol.display().to_string())
                && msg.contains("Bidirectional")
                && msg.contains("can never reach the host"),
            "{msg}"
        );
        let left: Vec<PathBuf> = c
            .state
            .mounts()
            .into_iter()
            .filter(|m| m.to_string_lossy().contains(&shared))
            .collect();
        assert!(
            left.is_empty(),
            "the refused container left mounts: {left:?}"
        );
        // The pod still works.
        let (code, _) = exec_any(&mut cri, &rw, "true").await;
        assert_eq!(code, 0);

        cri::stop_and_remove_pod(&mut cri, &pod).await;
        assert_no_pods(&mut cri).await;
    });
    drop(rt);
    c.assert_nothing_left();
    // The host's own mounts are all there (the later tmpfs added), none of hull's.
    let mut expected = host_mounts;
    expected.push(vol.join("later"));
    expected.sort();
    assert_eq!(host.mounts(), expected);
    assert_eq!(
        std::fs::read_to_string(vol.join("sub/f")).expect("f"),
        "on the tmpfs\n"
    );
}

#[test]
fn the_node_ipc_namespace_is_refused_before_any_vm_process_starts() {
    if !cri::require_cri("the_node_ipc_namespace_is_refused_before_any_vm_process_starts") {
        return;
    }
    let c = Containerd::start_cri(PAUSE_IMAGE);
    cri::import_images(&c);
    let logs = cri::logs_dir();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        let config = pod_config("hull-host-ipc", logs.path(), NamespaceMode::Node);
        std::fs::create_dir_all(&config.log_directory).expect("pod log dir");
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: HANDLER.to_string(),
        };
        let e = within("RunPodSandbox", cri.runtime.run_pod_sandbox(req))
            .await
            .expect_err("a pod in the node's IPC namespace must be refused");
        let msg = e.message();
        assert!(
            msg.contains("hostIPC") && msg.contains("ipc namespace"),
            "{msg}"
        );
        assert_no_pods(&mut cri).await;
    });
    drop(rt);
    c.assert_nothing_left();
    // No VM was ever made: the shim refused before its first VM dir.
    assert!(!c.state.path().join("vms").exists(), "a VM dir was made");
}
