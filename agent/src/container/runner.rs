//! The container steps, done by youki's libcontainer: namespaces, rootfs and mounts,
//! pivot_root, masked/readonly paths, hostname, user, capabilities, rlimits, seccomp,
//! cgroups, devices, sysctl, ... exactly as the OCI spec says.
//!
//! libcontainer clones in-process. The agent calls it on its single tokio thread
//! (a `current_thread` runtime), so the clone happens in a process without other
//! threads, and the reaper task cannot run (and steal libcontainer's own `waitpid` of its
//! intermediate process) while a call is in progress.
//!
//! Layout in the guest: `STATE_ROOT/<id>` is libcontainer's state, `BUNDLES/<id>` holds
//! the `config.json` the agent writes and exec process JSONs.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as LcContainer;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::Executor;
use oci_spec::runtime::{LinuxSeccomp, Process, Spec};

use super::console::ConsoleSocket;
use super::exec_seccomp::ExecSeccomp;

pub const STATE_ROOT: &str = "/run/hull/libcontainer";
pub const BUNDLES: &str = "/run/hull/bundles";
/// Console sockets live here under short numbered names: a socket address holds at most
/// 107 bytes, and a path built from containerd's 64-character container and exec ids
/// (`BUNDLES/<id>/console-<exec id>.sock`) does not fit.
pub const CONSOLE_SOCKETS: &str = "/run/hull/tty";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Libcontainer(String),
}

fn io_failed(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

fn libcontainer_failed(e: libcontainer::error::LibcontainerError) -> RunError {
    // libcontainer's errors nest their causes in Display only partly; Debug has all.
    let text = e.to_string();
    let debug = format!("{e:?}");
    if debug.contains(&text) && debug.len() > text.len() + 2 {
        RunError::Libcontainer(format!("{text} ({debug})"))
    } else {
        RunError::Libcontainer(text)
    }
}

/// The process's ends of its stdio (given to libcontainer, which dup2s them to 0/1/2).
#[derive(Debug)]
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Where a process's stdio goes: pipes, or a pty whose master comes back.
#[derive(Debug)]
pub enum StdioSetup {
    Pipes(ChildStdio),
    Terminal,
}

/// What creating a process gives back.
#[derive(Debug)]
pub struct Launched {
    pub pid: i32,
    pub pty_master: Option<OwnedFd>,
}

pub fn bundle_dir(id: &str) -> PathBuf {
    Path::new(BUNDLES).join(id)
}

pub fn state_dir(id: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(id)
}

fn builder(
    id: &str,
    stdio: StdioSetup,
    console: Option<&ConsoleSocket>,
    executor: impl Executor + 'static,
) -> Result<ContainerBuilder, RunError> {
    std::fs::create_dir_all(STATE_ROOT).map_err(io_failed(format!("create {STATE_ROOT}")))?;
    let mut b = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(STATE_ROOT)
        .map_err(libcontainer_failed)?
        .with_executor(executor)
        .with_console_socket(console.map(|c| c.path().to_path_buf()));
    if let StdioSetup::Pipes(p) = stdio {
        b = b
            .with_stdin(p.stdin)
            .with_stdout(p.stdout)
            .with_stderr(p.stderr);
    }
    Ok(b)
}

/// A console socket for a process that wants a terminal, at a fresh short path
/// (`CONSOLE_SOCKETS/<n>.sock`, whatever the ids' lengths).
fn console_for(stdio: &StdioSetup) -> Result<Option<ConsoleSocket>, RunError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match stdio {
        StdioSetup::Terminal => {
            std::fs::create_dir_all(CONSOLE_SOCKETS)
                .map_err(io_failed(format!("create {CONSOLE_SOCKETS}")))?;
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = Path::new(CONSOLE_SOCKETS).join(format!("{n}.sock"));
            Ok(Some(
                ConsoleSocket::bind(&path)
                    .map_err(io_failed(format!("bind {}", path.display())))?,
            ))
        }
        StdioSetup::Pipes(_) => Ok(None),
    }
}

fn receive_pty(console: Option<ConsoleSocket>) -> Result<Option<OwnedFd>, RunError> {
    console
        .map(|c| {
            c.receive_master()
                .map_err(io_failed("receive the pty master"))
        })
        .transpose()
}

/// Creates container `id` from `spec`: its init process exists and waits for
/// [`start`]. On failure nothing of it is left (see [`destroy`]).
/// The container's seccomp profile, beside a `config.json` that holds none when the
/// agent loads the filter itself (see [`super::exec_seccomp`]); execs read it.
const SECCOMP_PROFILE: &str = "seccomp.json";

/// The spec libcontainer gets and the executor of the init: the profile moved from the
/// spec into an executor that loads its compiled program, unless there is none or it
/// needs libseccomp's notify listener (then libcontainer loads it, as before).
fn init_seccomp(spec: &Spec) -> Result<(Spec, Option<ExecSeccomp>), RunError> {
    let profile = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let (Some(profile), Some(process)) = (profile, spec.process().as_ref()) else {
        return Ok((spec.clone(), None));
    };
    if libcontainer::seccomp::is_notify(&profile) {
        return Ok((spec.clone(), None));
    }
    let (executor, created) = ExecSeccomp::for_process(&profile, process)
        .map_err(|e| RunError::Libcontainer(e.to_string()))?;
    let mut for_libcontainer = spec.clone();
    for_libcontainer.set_process(Some(created));
    if let Some(linux) = for_libcontainer.linux_mut() {
        linux.set_seccomp(None);
    }
    Ok((for_libcontainer, Some(executor)))
}

/// The seccomp profile of container `id` for an exec: the one kept beside the spec, or
/// the spec's own (a notify profile libcontainer loaded).
fn container_seccomp(id: &str, bundle: &Path) -> Result<Option<LinuxSeccomp>, RunError> {
    let path = bundle.join(SECCOMP_PROFILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RunError::Libcontainer(format!("read {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
                RunError::Libcontainer(format!("read the spec of container {id}: {e}"))
            })?;
            Ok(spec.linux().as_ref().and_then(|l| l.seccomp().clone()))
        }
        Err(e) => Err(io_failed(format!("read {}", path.display()))(e)),
    }
}

pub fn create(id: &str, spec: &Spec, stdio: StdioSetup) -> Result<Launched, RunError> {
    let bundle = bundle_dir(id);
    std::fs::create_dir_all(&bundle).map_err(io_failed(format!("create {}", bundle.display())))?;
    let (for_libcontainer, seccomp) =
        tracing::info_span!("seccomp_compile").in_scope(|| init_seccomp(spec))?;
    if seccomp.is_some() {
        let profile = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
        let json = serde_json::to_vec(&profile)
            .map_err(|e| RunError::Libcontainer(format!("serialize the seccomp profile: {e}")))?;
        std::fs::write(bundle.join(SECCOMP_PROFILE), json)
            .map_err(io_failed(format!("write {SECCOMP_PROFILE}")))?;
    }
    let config = serde_json::to_vec(&for_libcontainer)
        .map_err(|e| RunError::Libcontainer(format!("serialize spec: {e}")))?;
    std::fs::write(bundle.join("config.json"), config).map_err(io_failed("write config.json"))?;
    let console = console_for(&stdio)?;
    let container = match seccomp {
        Some(executor) => builder(id, stdio, console.as_ref(), executor),
        None => builder(id, stdio, console.as_ref(), DefaultExecutor {}),
    }?
    .as_init(&bundle)
    .with_systemd(false)
    .with_detach(true)
    .build()
    .map_err(libcontainer_failed)?;
    let pid = container
        .pid()
        .ok_or_else(|| RunError::Libcontainer("created container has no pid".into()))?;
    Ok(Launched {
        pid: pid.as_raw(),
        pty_master: receive_pty(console)?,
    })
}

fn load(id: &str) -> Result<LcContainer, RunError> {
    LcContainer::load(state_dir(id)).map_err(libcontainer_failed)
}

/// Lets the init process run its command.
pub fn start(id: &str) -> Result<(), RunError> {
    load(id)?.start().map_err(libcontainer_failed)
}

/// Starts `process` in the namespaces and cgroup of container `id`, with the
/// container's seccomp filter (see `exec_seccomp`).
pub fn exec(
    id: &str,
    exec_id: &str,
    process: &Process,
    stdio: StdioSetup,
) -> Result<Launched, RunError> {
    let bundle = bundle_dir(id);
    let (seccomp, process) = match container_seccomp(id, &bundle)? {
        Some(profile) => {
            let (executor, created) = ExecSeccomp::for_process(&profile, process)
                .map_err(|e| RunError::Libcontainer(e.to_string()))?;
            (Some(executor), created)
        }
        None => (None, process.clone()),
    };
    let path = bundle.join(format!("exec-{exec_id}.json"));
    let json = serde_json::to_vec(&process)
        .map_err(|e| RunError::Libcontainer(format!("serialize process: {e}")))?;
    std::fs::write(&path, json).map_err(io_failed(format!("write {}", path.display())))?;
    let console = console_for(&stdio)?;
    let result = match seccomp {
        Some(executor) => builder(id, stdio, console.as_ref(), executor),
        None => builder(id, stdio, console.as_ref(), DefaultExecutor {}),
    }
    .and_then(|b| {
        b.as_tenant()
            .with_process(Some(&path))
            .with_detach(true)
            .build()
            .map_err(libcontainer_failed)
    });
    let _ = std::fs::remove_file(&path);
    let pid = result?;
    Ok(Launched {
        pid: pid.as_raw(),
        pty_master: receive_pty(console)?,
    })
}

pub fn pause(id: &str) -> Result<(), RunError> {
    load(id)?.pause().map_err(libcontainer_failed)
}

pub fn resume(id: &str) -> Result<(), RunError> {
    load(id)?.resume().map_err(libcontainer_failed)
}

/// How long destroy waits for the processes of a container's cgroup subtree to go.
const CGROUP_REMOVAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Removes everything of container `id`: libcontainer's state and cgroup (killing what
/// still runs), and the bundle. Best effort, so it also rolls back a failed create.
pub fn destroy(id: &str) -> Result<(), RunError> {
    let mut first_err = None;
    match load(id) {
        Ok(mut c) => {
            if let Err(e) = c.delete(true) {
                first_err = Some(libcontainer_failed(e));
            }
        }
        Err(_) => {
            // No readable state (creation failed early): remove what may exist.
            let _ = std::fs::remove_dir_all(state_dir(id));
        }
    }
    let cgroup = super::cgroup::dir_of(id);
    if cgroup.exists() {
        if let Err(e) = super::cgroup::remove_tree(&cgroup, CGROUP_REMOVAL_DEADLINE) {
            first_err.get_or_insert(RunError::Io {
                what: format!("remove cgroup {}", cgroup.display()),
                source: e,
            });
        }
    }
    let _ = std::fs::remove_dir_all(bundle_dir(id));
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Applies new cgroup resources (UpdateContainer).
pub fn update(id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<(), RunError> {
    use libcgroups::common::{create_cgroup_manager, CgroupConfig, CgroupManager, ControllerOpt};
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path: Path::new(super::spec::CGROUP_PARENT).join(id),
        systemd_cgroup: false,
        container_name: id.to_owned(),
    })
    .map_err(|e| RunError::Libcontainer(format!("cgroup manager: {e}")))?;
    manager
        .apply(&ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| RunError::Libcontainer(format!("apply resources: {e}")))
}
