//! Container RPCs: create (rolls back on failure), start, remove, pause/resume, update,
//! stats, list processes. The steps themselves are libcontainer's (`container::runner`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hull_proto::*;
use tracing::{debug, info, info_span, warn};

use super::process::{finish_ends, prepare_stdio, signal_all};
use super::{Service, ServiceError};
use crate::container::{cgroup, runner, spec, sysctl, Container, Process};
use crate::storage;

/// How long RemoveContainer waits for the processes to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The container `id`, or NotFound.
pub fn lookup(svc: &Service, id: &str) -> Result<Arc<Container>, ServiceError> {
    spec::validate_id("container id", id)?;
    svc.containers
        .get(id)
        .ok_or_else(|| ServiceError::NotFound(format!("container {id}")))
}

fn unmount_all(mounted: &[storage::MountPlan]) {
    for plan in mounted.iter().rev() {
        storage::unmount(plan);
    }
}

pub fn do_create_container(
    svc: &Service,
    req: &CreateContainerRequest,
) -> Result<Empty, ServiceError> {
    let id = req.container_id.as_str();
    spec::validate_id("container id", id)?;
    if svc.containers.contains(id) || runner::state_dir(id).exists() {
        return Err(ServiceError::AlreadyExists(format!("container {id}")));
    }
    if !req.sandbox_container_id.is_empty() {
        spec::validate_id("sandbox container id", &req.sandbox_container_id)?;
    }
    let mut steps = StepTimes::start();
    let mut oci = spec::parse_spec(&req.oci_spec_json, id)?;
    join_sandbox(svc, req, &mut oci)?;
    // The pod's network sysctls: the VM's netns is the pod's, libcontainer would refuse
    // them there. Set before anything of the container exists (nothing to roll back).
    let net_sysctls = sysctl::take_vm_net_sysctls(&mut oci)?;
    sysctl::apply(id, &net_sysctls)?;
    let terminal = req.stdio.terminal || spec::wants_terminal(&oci);
    if let Some(p) = oci.process_mut().as_mut() {
        p.set_terminal(Some(terminal));
    }
    steps.mark("spec");
    let plans = req
        .storages
        .iter()
        .map(storage::plan)
        .collect::<Result<Vec<_>, _>>()?;
    let mut mounted = Vec::new();
    for plan in plans {
        let span = info_span!("create_storage", target = %plan.target.display());
        if let Err(e) = span.in_scope(|| storage::mount(&plan)) {
            unmount_all(&mounted);
            return Err(e.into());
        }
        mounted.push(plan);
    }
    steps.mark("storages");
    let rollback = |mounted: &[storage::MountPlan]| {
        if let Err(e) = runner::destroy(id) {
            warn!(container = id, error = %e, "rollback of a failed create");
        }
        unmount_all(mounted);
    };
    let (setup, ends) = match prepare_stdio(&req.stdio, terminal) {
        Ok(v) => v,
        Err(e) => {
            unmount_all(&mounted);
            return Err(ServiceError::internal("stdio pipes", e));
        }
    };
    steps.mark("stdio");
    let created = info_span!("libcontainer_create").in_scope(|| {
        svc.reaper.spawn_watched(|| {
            let launched = runner::create(id, &oci, setup)?;
            let pid = launched.pid;
            Ok::<_, runner::RunError>((launched, pid))
        })
    });
    steps.mark("libcontainer");
    let (launched, exited) = match created {
        Ok(v) => v,
        Err(e) => {
            rollback(&mounted);
            return Err(create_error(id, e));
        }
    };
    let pid = launched.pid;
    let console_size = oci.process().as_ref().and_then(|p| p.console_size());
    let size = crate::container::stdio::initial_size(console_size.as_ref());
    let ends = match finish_ends(ends, launched.pty_master, &req.stdio, size) {
        Ok(ends) => ends,
        Err(e) => {
            rollback(&mounted);
            return Err(ServiceError::internal("process stdio", e));
        }
    };
    let init = Arc::new(Process::new(
        String::new(),
        pid,
        ends,
        exited,
        cgroup::dir_of(id),
    ));
    tokio::spawn(kill_leftovers_after_init(init.clone(), cgroup::dir_of(id)));
    let container = Arc::new(Container::new(id.to_owned(), init, mounted));
    svc.containers.insert(container);
    steps.mark("register");
    info!(container = id, pid, terminal, steps = %steps, "container created");
    Ok(Empty::new())
}

/// How long each step of a request took, for its log line (`spec 2 ms, storages 31 ms, ...`).
struct StepTimes {
    last: std::time::Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl StepTimes {
    fn start() -> StepTimes {
        StepTimes {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    /// The step `name` ended now.
    fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for StepTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, took)) in self.done.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name} {} ms", took.as_millis())?;
        }
        Ok(())
    }
}

/// Once a container's init has exited, whatever is left in the container's cgroup is
/// killed, as runc's shim does. With its own PID namespace the kernel has already done
/// it; in the pod's or the VM's PID namespace the init's children (an nginx master's
/// workers) would live on, keep the container's stdout and stderr open, and so keep its
/// output, and the pod's stop, from ever ending. Exec'd processes go too, as with runc.
async fn kill_leftovers_after_init(init: Arc<Process>, cgroup_dir: PathBuf) {
    if init.wait().await.is_some() {
        cgroup::kill_all(&cgroup_dir);
        debug!(cgroup = %cgroup_dir.display(), "the container's init exited; its cgroup's other processes are killed");
    }
}

/// Points the namespaces the request shares with the pod's sandbox container at that
/// container's init process, which must be running (its namespaces die with it).
fn join_sandbox(
    svc: &Service,
    req: &CreateContainerRequest,
    oci: &mut oci_spec::runtime::Spec,
) -> Result<(), ServiceError> {
    if req.sandbox_namespaces.is_empty() {
        return Ok(());
    }
    let id = req.container_id.as_str();
    let types = req
        .sandbox_namespaces
        .iter()
        .map(|n| spec::sandbox_namespace(n))
        .collect::<Result<Vec<_>, _>>()?;
    let names = req.sandbox_namespaces.join(", ");
    let sandbox_id = req.sandbox_container_id.as_str();
    if sandbox_id.is_empty() {
        return Err(ServiceError::InvalidArgument(format!(
            "container {id}: sandbox_namespaces ({names}) given without sandbox_container_id"
        )));
    }
    let sandbox = svc.containers.get(sandbox_id).ok_or_else(|| {
        ServiceError::NotFound(format!(
            "sandbox container {sandbox_id} (whose {names} namespaces container {id} joins)"
        ))
    })?;
    if !sandbox.is_started() || sandbox.init.has_exited() {
        return Err(ServiceError::FailedPrecondition(format!(
            "sandbox container {sandbox_id} is not running: container {id} cannot join its {names} namespaces"
        )));
    }
    spec::join_namespaces(oci, sandbox.init.pid, &types)?;
    info!(container = id, sandbox = sandbox_id, pid = sandbox.init.pid, namespaces = %names, "joining the pod's namespaces");
    Ok(())
}

/// A missing command is the caller's mistake (INVALID_ARGUMENT, "command not found");
/// anything else failed in the guest.
fn create_error(id: &str, e: runner::RunError) -> ServiceError {
    let text = e.to_string();
    match text.find("executable '") {
        Some(at) if text.contains("not found in $PATH") => ServiceError::InvalidArgument(format!(
            "container {id}: command not found: {}",
            &text[at..]
        )),
        _ => ServiceError::internal(format!("create container {id}"), e),
    }
}

/// Most profiles, and largest profile, PrepareCaches takes.
const PREPARE_MAX_PROFILES: usize = 8;
const PREPARE_MAX_PROFILE_BYTES: usize = 1 << 20;

/// PrepareCaches: compiles each seccomp profile into the agent's cache, so that the
/// first container with it does not wait for the compile.
pub fn do_prepare_caches(
    req: &PrepareCachesRequest,
) -> Result<PrepareCachesResponse, ServiceError> {
    let _span = info_span!("prepare_caches", profiles = req.seccomp_profiles.len()).entered();
    if req.seccomp_profiles.len() > PREPARE_MAX_PROFILES {
        return Err(ServiceError::InvalidArgument(format!(
            "{} seccomp profiles, at most {PREPARE_MAX_PROFILES}",
            req.seccomp_profiles.len()
        )));
    }
    let mut compiled = 0u32;
    for (i, text) in req.seccomp_profiles.iter().enumerate() {
        if text.len() > PREPARE_MAX_PROFILE_BYTES {
            return Err(ServiceError::InvalidArgument(format!(
                "seccomp profile {i} is {} bytes, at most {PREPARE_MAX_PROFILE_BYTES}",
                text.len()
            )));
        }
        let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_str(text)
            .map_err(|e| ServiceError::InvalidArgument(format!("seccomp profile {i}: {e}")))?;
        crate::container::seccomp_bpf::compiled(&profile)
            .map_err(|e| ServiceError::InvalidArgument(format!("seccomp profile {i}: {e}")))?;
        compiled += 1;
    }
    info!(compiled, "caches prepared");
    Ok(PrepareCachesResponse {
        seccomp_compiled: compiled,
        ..Default::default()
    })
}

pub fn do_start_container(
    svc: &Service,
    req: &StartContainerRequest,
) -> Result<Empty, ServiceError> {
    let c = lookup(svc, &req.container_id)?;
    if c.init.has_exited() {
        return Err(ServiceError::FailedPrecondition(format!(
            "container {}: its init process has exited",
            c.id
        )));
    }
    if !c.mark_started() {
        return Err(ServiceError::FailedPrecondition(format!(
            "container {} was already started",
            c.id
        )));
    }
    runner::start(&c.id)
        .map_err(|e| ServiceError::internal(format!("start container {}", c.id), e))?;
    info!(container = %c.id, "container started");
    Ok(Empty::new())
}

pub async fn do_remove_container(
    svc: &Service,
    req: &RemoveContainerRequest,
) -> Result<Empty, ServiceError> {
    let c = lookup(svc, &req.container_id)?;
    if !c.init.has_exited() {
        if req.timeout_secs == 0 && c.is_started() {
            return Err(ServiceError::FailedPrecondition(format!(
                "container {} is still running (give timeout_secs to stop it)",
                c.id
            )));
        }
        // A never started container has nothing to shut down gracefully.
        if req.timeout_secs > 0 && c.is_started() {
            signal_all(&c, libc::SIGTERM);
            let grace = Duration::from_secs(u64::from(req.timeout_secs));
            let _ = tokio::time::timeout(grace, c.init.wait()).await;
        }
        if !c.init.has_exited() {
            signal_all(&c, libc::SIGKILL);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.init.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            if tokio::time::timeout(KILL_WAIT, c.init.wait())
                .await
                .is_err()
            {
                return Err(ServiceError::internal(
                    format!("remove container {}", c.id),
                    "init process did not die after SIGKILL",
                ));
            }
        }
    }
    svc.containers.check_oom(&c);
    let result = runner::destroy(&c.id);
    unmount_all(&c.mounts);
    svc.containers.remove(&c.id);
    result.map_err(|e| ServiceError::internal(format!("remove container {}", c.id), e))?;
    info!(container = %c.id, "container removed");
    Ok(Empty::new())
}

pub fn do_pause(svc: &Service, req: &ContainerRequest) -> Result<Empty, ServiceError> {
    let c = lookup(svc, &req.container_id)?;
    runner::pause(&c.id).map_err(|e| ServiceError::internal(format!("pause {}", c.id), e))?;
    Ok(Empty::new())
}

pub fn do_resume(svc: &Service, req: &ContainerRequest) -> Result<Empty, ServiceError> {
    let c = lookup(svc, &req.container_id)?;
    runner::resume(&c.id).map_err(|e| ServiceError::internal(format!("resume {}", c.id), e))?;
    Ok(Empty::new())
}

pub fn do_update(svc: &Service, req: &UpdateContainerRequest) -> Result<Empty, ServiceError> {
    let c = lookup(svc, &req.container_id)?;
    let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&req.resources_json)
        .map_err(|e| ServiceError::InvalidArgument(format!("resources_json: {e}")))?;
    runner::update(&c.id, &resources)
        .map_err(|e| ServiceError::internal(format!("update {}", c.id), e))?;
    Ok(Empty::new())
}

pub fn do_stats(
    svc: &Service,
    req: &ContainerRequest,
) -> Result<StatsContainerResponse, ServiceError> {
    let c = lookup(svc, &req.container_id)?;
    cgroup::stats(&c.cgroup).map_err(|e| ServiceError::internal(format!("stats {}", c.id), e))
}

/// The pid inside the process's innermost PID namespace (last NSpid field).
fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn do_list_processes(
    svc: &Service,
    req: &ContainerRequest,
) -> Result<ListProcessesResponse, ServiceError> {
    let c = lookup(svc, &req.container_id)?;
    let pids = cgroup::procs(&c.cgroup)
        .map_err(|e| ServiceError::internal(format!("list {}", c.id), e))?;
    let execs = c.exec_processes();
    let mut resp = ListProcessesResponse::new();
    for pid in pids {
        let mut info = ProcessInfo::new();
        info.pid = ns_pid(pid).unwrap_or(pid);
        info.exec_id = execs
            .iter()
            .find(|p| p.pid == pid)
            .map(|p| p.exec_id.clone())
            .unwrap_or_default();
        info.args = cmdline(pid);
        resp.processes.push(info);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(profiles: &[&str]) -> PrepareCachesRequest {
        PrepareCachesRequest {
            seccomp_profiles: profiles.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn prepare_caches_compiles_each_profile_and_names_a_bad_one() {
        let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#;
        let reply = do_prepare_caches(&request(&[profile])).expect("compiled");
        assert_eq!(reply.seccomp_compiled, 1);
        let err = do_prepare_caches(&request(&[profile, "{not json"])).expect_err("bad JSON");
        assert!(err.to_string().contains("seccomp profile 1"), "{err}");
        let many = vec![profile; PREPARE_MAX_PROFILES + 1];
        assert!(do_prepare_caches(&request(&many)).is_err());
        let huge = "x".repeat(PREPARE_MAX_PROFILE_BYTES + 1);
        let err = do_prepare_caches(&request(&[&huge])).expect_err("too large");
        assert!(err.to_string().contains("at most"), "{err}");
    }
}
