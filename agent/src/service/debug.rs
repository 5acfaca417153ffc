//! Debug processes (`hull debug exec`): a command run in the guest itself, outside any
//! container (the VM's root namespaces and cgroup, as root), when CreateSandbox allowed
//! it (`debug_exec`). In the API such a process has an empty container id; its exec id
//! names it for the I/O, wait, signal and resize RPCs.
//!
//! The guest has no shell of its own (its root holds the agent and empty mount points):
//! a debug command is a guest path, typically a static binary from a container's rootfs
//! in the sandbox share (`/run/hull/share/containers/<id>/rootfs/bin/busybox sh`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use hull_proto::{Empty, ExecProcessRequest};
use tracing::info;

use super::process::{finish_ends, prepare_stdio};
use super::{Service, ServiceError};
use crate::container::runner::{ChildStdio, StdioSetup};
use crate::container::{spec, stdio, Process};

/// PATH of a debug process whose env names none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An empty container id names a debug process, which needs an exec id.
fn check_exec_id(exec_id: &str) -> Result<(), ServiceError> {
    if exec_id.is_empty() {
        return Err(ServiceError::InvalidArgument(
            "container id is empty, which names a debug process of the guest, and there is no exec id".into(),
        ));
    }
    spec::validate_id("exec id", exec_id).map_err(ServiceError::from)
}

/// The debug process `exec_id`, or NotFound.
pub fn lookup(svc: &Service, exec_id: &str) -> Result<Arc<Process>, ServiceError> {
    check_exec_id(exec_id)?;
    svc.containers
        .debug_process(exec_id)
        .ok_or_else(|| ServiceError::NotFound(format!("debug process {exec_id}")))
}

/// Refuses unless the sandbox was created with `debug_exec`.
pub fn check_allowed(svc: &Service) -> Result<(), ServiceError> {
    if svc.containers.debug_exec_allowed() {
        Ok(())
    } else {
        Err(ServiceError::PermissionDenied(
            "debug processes are not allowed in this sandbox (it was created without debug_exec; set [debug] exec = true in hull's config before the sandbox boots)".into(),
        ))
    }
}

/// What of the OCI process a debug process uses: args, env, cwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

/// Checks the process JSON and resolves the program in the env's PATH (as execvp).
pub fn command_of(process: &oci_spec::runtime::Process) -> Result<DebugCommand, ServiceError> {
    let args = process.args().clone().unwrap_or_default();
    let Some(first) = args.first() else {
        return Err(ServiceError::InvalidArgument(
            "the debug process has no args".into(),
        ));
    };
    let mut env = Vec::new();
    for e in process.env().clone().unwrap_or_default() {
        let (k, v) = e.split_once('=').ok_or_else(|| {
            ServiceError::InvalidArgument(format!("env entry {e:?} is not KEY=VALUE"))
        })?;
        env.push((k.to_string(), v.to_string()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let cwd = process.cwd().clone();
    if !cwd.is_absolute() {
        return Err(ServiceError::InvalidArgument(format!(
            "cwd {} is not absolute",
            cwd.display()
        )));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let program = resolve(first, path).ok_or_else(|| {
        ServiceError::InvalidArgument(format!(
            "debug process: command not found in the guest: {first:?} (PATH {path})"
        ))
    })?;
    Ok(DebugCommand {
        program,
        args,
        env,
        cwd,
    })
}

fn resolve(cmd: &str, path: &str) -> Option<PathBuf> {
    let is_exe = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return is_exe(&p).then_some(p);
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| is_exe(p))
}

/// A new pty of the guest's devpts (mounted with `newinstance` at /dev/pts, so its own
/// `ptmx`): (master, slave), both close-on-exec.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/pts/ptmx")?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which lives for the call.
    if unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCSPTLCK,
            &unlock as *const libc::c_int,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd (or -1).
    let fd = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl just returned this fd; nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((OwnedFd::from(master), slave))
}

/// How long the agent lets the reply to DebugCrashAgent reach the host before it aborts.
const CRASH_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// DebugCrashAgent: fault injection for the host's leak and fault suite (`scripts/soak`).
/// Allowed only where debug processes are; the reply goes out, then the agent aborts as a
/// crashing agent would, and the guest kernel panics because its init died.
pub fn do_debug_crash_agent(svc: &Service) -> Result<Empty, ServiceError> {
    check_allowed(svc)?;
    tracing::warn!("DebugCrashAgent: the agent aborts in {CRASH_DELAY:?} (fault injection)");
    std::thread::spawn(|| {
        std::thread::sleep(CRASH_DELAY);
        std::process::abort();
    });
    Ok(Empty::new())
}

/// ExecProcess with an empty container id.
pub fn do_debug_exec(svc: &Service, req: &ExecProcessRequest) -> Result<Empty, ServiceError> {
    check_exec_id(&req.exec_id)?;
    check_allowed(svc)?;
    if svc.containers.has_debug_process(&req.exec_id) {
        return Err(ServiceError::AlreadyExists(format!(
            "debug process {}",
            req.exec_id
        )));
    }
    let process = spec::parse_process(&req.process_json)?;
    let cmd = command_of(&process)?;
    let terminal = req.stdio.terminal || process.terminal().unwrap_or(false);
    let size = stdio::initial_size(process.console_size().as_ref());
    let (child_stdio, pending, pty) = if terminal {
        let (master, slave) =
            open_pty().map_err(|e| ServiceError::internal("open a pty in /dev/pts", e))?;
        // The window size is there before the process runs.
        stdio::resize(master.as_raw_fd(), size.0, size.1)
            .map_err(|e| ServiceError::internal("TIOCSWINSZ", e))?;
        let dup = |what| {
            slave
                .try_clone()
                .map_err(|e| ServiceError::internal(what, e))
        };
        let child = ChildStdio {
            stdin: dup("pty slave")?,
            stdout: dup("pty slave")?,
            stderr: dup("pty slave")?,
        };
        (child, Default::default(), Some(master))
    } else {
        match prepare_stdio(&req.stdio, false)
            .map_err(|e| ServiceError::internal("stdio pipes", e))?
        {
            (StdioSetup::Pipes(child), pending) => (child, pending, None),
            (StdioSetup::Terminal, _) => {
                return Err(ServiceError::internal("stdio pipes", "unexpected terminal"))
            }
        }
    };
    let mut command = Command::new(&cmd.program);
    command
        .arg0(&cmd.args[0])
        .args(&cmd.args[1..])
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cmd.cwd)
        .stdin(Stdio::from(child_stdio.stdin))
        .stdout(Stdio::from(child_stdio.stdout))
        .stderr(Stdio::from(child_stdio.stderr));
    if terminal {
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (setsid, ioctl) on fd 0, which is the pty slave.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let (child, exited) = svc
        .reaper
        .spawn_watched(|| {
            let child = command.spawn()?;
            let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>((child, pid))
        })
        .map_err(|e| {
            ServiceError::internal(
                format!(
                    "debug process {}: start {}",
                    req.exec_id,
                    cmd.program.display()
                ),
                e,
            )
        })?;
    // The child's ends of the stdio were moved into `command`: drop them here.
    drop(command);
    let pid = i32::try_from(child.id()).unwrap_or(-1);
    let ends = match finish_ends(pending, pty, &req.stdio, size) {
        Ok(ends) => ends,
        Err(e) => {
            // Nobody could talk to it: it must not run on. The reaper reaps it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(ServiceError::internal("process stdio", e));
        }
    };
    // Not a container: no cgroup of its own for OOM accounting.
    let p = Arc::new(Process::new(
        req.exec_id.clone(),
        pid,
        ends,
        exited,
        PathBuf::new(),
    ));
    svc.containers.add_debug_process(p);
    info!(exec = %req.exec_id, pid, terminal, program = %cmd.program.display(), "debug process started");
    Ok(Empty::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::ProcessBuilder;

    #[test]
    fn commands_are_resolved_in_path_and_checked() {
        let p = ProcessBuilder::default()
            .args(vec!["true".to_string()])
            .env(vec!["A=1".to_string()])
            .cwd("/")
            .build()
            .unwrap();
        let c = command_of(&p).unwrap();
        assert!(
            c.program.ends_with("true") && c.program.is_absolute(),
            "{c:?}"
        );
        assert!(c.env.contains(&("PATH".into(), DEFAULT_PATH.into())));
        assert!(c.env.contains(&("A".into(), "1".into())));

        let missing = ProcessBuilder::default()
            .args(vec!["no-such-cmd-xyz".to_string()])
            .cwd("/")
            .build()
            .unwrap();
        let e = command_of(&missing).unwrap_err();
        assert!(
            e.to_string().contains("command not found in the guest"),
            "{e}"
        );
        let empty = ProcessBuilder::default()
            .args(Vec::<String>::new())
            .cwd("/")
            .build()
            .unwrap();
        assert!(command_of(&empty).is_err());
        let bad_env = ProcessBuilder::default()
            .args(vec!["true".to_string()])
            .env(vec!["NOEQUALS".to_string()])
            .cwd("/")
            .build()
            .unwrap();
        assert!(command_of(&bad_env)
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
    }
}
