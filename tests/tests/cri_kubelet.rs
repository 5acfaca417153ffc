//! What a kubelet does every minute, through a real containerd 1.6 CRI plugin with hull
//! as the runtime handler (and `ctr` where the CRI would need a streaming client):
//! - a pod whose container's init left a child holding its stdout stops, and nothing
//!   is left (the agent kills what the init left in the container's cgroup);
//! - an exec'd process gets the container's seccomp filter, capabilities,
//!   no_new_privs, rlimits, cgroup and namespaces, root or not;
//! - a tty exec with containerd's 64-character container and exec ids;
//! - an OOM-killed container is reported `OOMKilled` with 137;
//! - a seccomp profile naming syscalls the guest kernel lacks leaves nothing of hull's
//!   in the container's stderr.
//!
//! Every CRI call is bounded (`within`); each test ends with nothing left.

use std::path::Path;
use std::time::Duration;

use hull_tests::containerd::{Containerd, IMAGE as CTR_IMAGE, RUNTIME};
use hull_tests::cri::{self, within, Cri, HANDLER, PAUSE_IMAGE};
use hull_tests::{output_text, wait_for};
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    Int64Value, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    SecurityProfile, StopContainerRequest,
};

fn pod_config(name: &str, pid: NamespaceMode, logs: &Path) -> PodSandboxConfig {
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
                namespace_options: Some(namespaces(pid)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn namespaces(pid: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A container's Linux settings: the pod's PID mode, and `security` on top.
fn linux(pid: NamespaceMode, security: LinuxContainerSecurityContext) -> LinuxContainerConfig {
    LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(namespaces(pid)),
            ..security
        }),
        ..Default::default()
    }
}

/// A running CRI containerd with the images imported, a log dir, and a tokio runtime.
struct Node {
    containerd: Containerd,
    logs: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Node {
    fn start() -> Node {
        let containerd = Containerd::start_cri(PAUSE_IMAGE);
        cri::import_images(&containerd);
        let logs = tempfile::Builder::new()
            .prefix("hull-kubelet-logs-")
            .tempdir_in("/tmp")
            .expect("log dir");
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        Node {
            containerd,
            logs,
            rt,
        }
    }

    async fn connect(&self) -> Cri {
        let mut cri = Cri::connect(&self.containerd.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(cri::IMAGE).await;
        cri
    }

    /// Stops and removes `pods`, checks CRI lists nothing, and that nothing of hull is
    /// left on the host.
    fn finish(self, pods: &[String]) {
        let Node {
            containerd,
            logs,
            rt,
        } = self;
        rt.block_on(async {
            let mut cri = Cri::connect(&containerd.socket()).await;
            for pod in pods {
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
        drop(logs);
        containerd.assert_nothing_left();
    }
}

/// The lines of a CRI log file (`<time> <stream> <tag> <text>`) as `(stream, text)`.
fn log_lines(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.splitn(4, ' ');
            let (_time, stream, _tag) = (w.next()?, w.next()?, w.next()?);
            Some((stream.to_string(), w.next().unwrap_or_default().to_string()))
        })
        .collect()
}

/// A Localhost seccomp profile (OCI form, as containerd 1.6 reads it): everything
/// allowed but `denied`, which fail with EPERM.
fn localhost_profile(dir: &Path, name: &str, denied: &[&str]) -> SecurityProfile {
    let path = dir.join(name);
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&profile).expect("json")).expect("profile");
    SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: path.display().to_string(),
    }
}

/// Stopping a pod whose container's init left a child holding its stdout (an nginx
/// master and its worker) in the pod's shared PID namespace: the stop ends well within
/// containerd's patience, the exit is the init's, and nothing is left. Before the agent
/// killed what an init leaves in its cgroup, StopContainer hung for 5 minutes and the
/// VM leaked.
#[test]
fn a_pod_whose_init_left_a_child_holding_stdout_stops_and_leaves_nothing() {
    if !cri::require_cri("a_pod_whose_init_left_a_child_holding_stdout_stops_and_leaves_nothing") {
        return;
    }
    let node = Node::start();
    let pod = node.rt.block_on(async {
        let mut cri = node.connect().await;
        let config = pod_config("leaver", NamespaceMode::Pod, node.logs.path());
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        let script = "(while :; do echo worker-tick; sleep 1; done) & echo master-up; exec sleep 100000";
        let id = cri::start_container(&mut cri, &pod, &config, "master", script, Some(linux(NamespaceMode::Pod, Default::default()))).await;
        let log = Path::new(&config.log_directory).join("master.log");
        wait_for("the worker's output", Duration::from_secs(60), || {
            log_lines(&log).iter().any(|(_, t)| t == "worker-tick").then_some(())
        });
        // The kubelet's stop: SIGKILL of the init at once (timeout 0).
        let stopped = tokio::time::timeout(
            Duration::from_secs(90),
            cri.runtime.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 0 }),
        )
        .await;
        match stopped {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("StopContainer: {e}"),
            Err(_) => panic!("StopContainer did not return within 90 s: the init's child kept the container's output open"),
        }
        let status = cri::wait_exited(&mut cri, &id).await;
        assert_eq!(status.exit_code, 137, "the init was SIGKILLed: {status:?}");
        pod
    });
    node.finish(&[pod]);
}

/// What a process exec'd into a container gets, compared with the container's init,
/// for a root container under the RuntimeDefault profile and a non-root one (no
/// no_new_privs, so the filter is loaded with privileges the process then drops) under
/// a Localhost profile denying chmod: the same Seccomp mode and filter count,
/// capabilities, NoNewPrivs, rlimits, cgroup and namespaces; and the filter works on
/// the exec'd process (chmod fails with EPERM). Before, an exec'd process showed
/// `Seccomp: 0`.
#[test]
fn an_exec_gets_the_containers_seccomp_capabilities_rlimits_cgroup_and_namespaces() {
    if !cri::require_cri(
        "an_exec_gets_the_containers_seccomp_capabilities_rlimits_cgroup_and_namespaces",
    ) {
        return;
    }
    let node = Node::start();
    let profiles = tempfile::tempdir().expect("profile dir");
    let pod = node.rt.block_on(async {
        let mut cri = node.connect().await;
        let config = pod_config("confined", NamespaceMode::Container, node.logs.path());
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        let root = cri::start_container(
            &mut cri,
            &pod,
            &config,
            "root",
            "exec sleep 100001",
            Some(linux(
                NamespaceMode::Container,
                LinuxContainerSecurityContext {
                    seccomp: Some(SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, localhost_ref: String::new() }),
                    ..Default::default()
                },
            )),
        )
        .await;
        let user = cri::start_container(
            &mut cri,
            &pod,
            &config,
            "user",
            "exec sleep 100002",
            Some(linux(
                NamespaceMode::Container,
                LinuxContainerSecurityContext {
                    seccomp: Some(localhost_profile(profiles.path(), "no-chmod.json", &["chmod", "fchmod", "fchmodat"])),
                    run_as_user: Some(Int64Value { value: 1000 }),
                    no_new_privs: false,
                    ..Default::default()
                },
            )),
        )
        .await;
        // `self` is the exec'd shell; PID 1 is the container's init (its own PID namespace).
        let probe = "for p in 1 self; do \
              grep -E '^(Uid|Seccomp|Seccomp_filters|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/$p/status | sed \"s/^/$p /\"; \
              sed \"s/^/$p limit /\" /proc/$p/limits; \
              sed \"s/^/$p cgroup /\" /proc/$p/cgroup; \
              for n in cgroup ipc mnt net pid uts; do echo \"$p ns $n $(readlink /proc/$p/ns/$n)\"; done; \
            done";
        for (name, id, seccomp_mode) in [("root", &root, "2"), ("user", &user, "2")] {
            let text = cri::exec(&mut cri, id, probe).await;
            let of = |who: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(&format!("{who} ")))
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect()
            };
            let (init, exec) = (of("1"), of("self"));
            assert!(init.len() > 20, "{name}: the probe saw too little: {text}");
            assert_eq!(init, exec, "{name}: the exec'd process differs from the container's init:\n{text}");
            assert!(exec.iter().any(|l| l == &format!("Seccomp: {seccomp_mode}")), "{name}: {text}");
            assert!(exec.iter().any(|l| l.starts_with("ns pid pid:[")), "{name}: {text}");
        }
        // The root container's capabilities are containerd's default set, not the
        // agent's (no CAP_SYS_ADMIN: bit 21); the user's effective set is empty.
        let caps = |text: &str, key: &str| -> u64 {
            let line = text.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} in {text}"));
            u64::from_str_radix(line.split_whitespace().nth(1).expect("value"), 16).expect("hex")
        };
        let root_status = cri::exec(&mut cri, &root, "cat /proc/self/status").await;
        assert_eq!(caps(&root_status, "CapEff:") & (1 << 21), 0, "an exec must not keep CAP_SYS_ADMIN: {root_status}");
        assert_ne!(caps(&root_status, "CapEff:"), 0, "{root_status}");
        let user_status = cri::exec(&mut cri, &user, "cat /proc/self/status").await;
        assert_eq!(caps(&user_status, "CapEff:"), 0, "{user_status}");
        assert_eq!(caps(&user_status, "CapBnd:") & (1 << 21), 0, "{user_status}");
        // The filter works on the exec'd process: chmod is denied, the rest is not.
        let out = cri::exec(&mut cri, &user, "touch /tmp/f && chmod 600 /tmp/f 2>&1; echo rc=$?; ls -l /tmp/f").await;
        assert!(out.contains("rc=1") && out.contains("Operation not permitted"), "chmod under the profile: {out}");
        assert!(out.contains("-rw-r--r--"), "the mode is unchanged: {out}");
        pod
    });
    node.finish(&[pod]);
}

/// A container whose memory limit its program exceeds: 137, reason OOMKilled.
#[test]
fn an_oom_killed_container_is_reported_oomkilled() {
    if !cri::require_cri("an_oom_killed_container_is_reported_oomkilled") {
        return;
    }
    let node = Node::start();
    let pod = node.rt.block_on(async {
        let mut cri = node.connect().await;
        let config = pod_config("hog", NamespaceMode::Container, node.logs.path());
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        let mut settings = linux(NamespaceMode::Container, Default::default());
        settings.resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        });
        // busybox tail keeps a line that never ends: it grows until the limit.
        let id = cri::start_container(
            &mut cri,
            &pod,
            &config,
            "hog",
            "exec tail /dev/zero",
            Some(settings),
        )
        .await;
        let status = cri::wait_exited(&mut cri, &id).await;
        assert_eq!(status.exit_code, 137, "{status:?}");
        assert_eq!(status.reason, "OOMKilled", "{status:?}");
        pod
    });
    node.finish(&[pod]);
}

/// A seccomp profile naming syscalls neither the guest kernel nor libseccomp knows
/// (Docker's default names several): the container's stderr holds only what the
/// container wrote. Before, the in-guest runtime's warnings ("failed to resolve
/// syscall") came first.
#[test]
fn unknown_syscalls_in_a_profile_leave_the_containers_stderr_clean() {
    if !cri::require_cri("unknown_syscalls_in_a_profile_leave_the_containers_stderr_clean") {
        return;
    }
    let node = Node::start();
    let profiles = tempfile::tempdir().expect("profile dir");
    let pod = node.rt.block_on(async {
        let mut cri = node.connect().await;
        let config = pod_config("quiet", NamespaceMode::Container, node.logs.path());
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        let profile = localhost_profile(
            profiles.path(),
            "unknown.json",
            &[
                "getxattrat",
                "setxattrat",
                "listxattrat",
                "removexattrat",
                "hull_no_such_syscall",
            ],
        );
        let settings = linux(
            NamespaceMode::Container,
            LinuxContainerSecurityContext {
                seccomp: Some(profile),
                ..Default::default()
            },
        );
        let id = cri::start_container(
            &mut cri,
            &pod,
            &config,
            "quiet",
            "echo out-line; echo err-line >&2",
            Some(settings),
        )
        .await;
        let status = cri::wait_exited(&mut cri, &id).await;
        assert_eq!(status.exit_code, 0, "{status:?}");
        let log = Path::new(&config.log_directory).join("quiet.log");
        let lines = wait_for("both lines in the CRI log", Duration::from_secs(30), || {
            let l = log_lines(&log);
            (l.len() >= 2).then_some(l)
        });
        let want = vec![
            ("stdout".to_string(), "out-line".to_string()),
            ("stderr".to_string(), "err-line".to_string()),
        ];
        let mut got = lines.clone();
        got.sort();
        let mut sorted_want = want.clone();
        sorted_want.sort();
        assert_eq!(
            got, sorted_want,
            "the container's log holds only its own lines: {lines:?}"
        );
        pod
    });
    node.finish(&[pod]);
}

/// `ctr task exec -t` with containerd's 64-character container and exec ids, as
/// `kubectl exec -it` makes them: the exec gets a terminal. Before, the agent's
/// console socket path was too long for a socket address.
#[test]
fn a_tty_exec_with_64_character_ids_gets_a_terminal() {
    if !hull_tests::containerd::require_containerd(
        "a_tty_exec_with_64_character_ids_gets_a_terminal",
    ) {
        return;
    }
    if hull_runtime::host::find_binary(Path::new("script")).is_none() {
        panic!("`script` (util-linux) is needed to give ctr a terminal");
    }
    let c = Containerd::start();
    let id = "c".repeat(64);
    let exec_id = "e".repeat(64);
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        CTR_IMAGE,
        &id,
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let cmdline = format!(
        "ctr -a {} task exec -t --exec-id {exec_id} {id} sh -c 'tty; echo exec-done'",
        c.socket().display()
    );
    let out = hull_tests::in_terminal(&cmdline, 120);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- containerd log ---\n{}",
        output_text(&out),
        c.log()
    );
    assert!(
        text.contains("/dev/pts/") && text.contains("exec-done"),
        "{text:?}"
    );
    c.kill_and_remove(&id);
    c.assert_nothing_left();
}
