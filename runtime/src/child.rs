//! Helper processes hull starts on the host (QEMU, vhost-device-vsock, virtiofsd).
//!
//! Each one runs in its own process group (a Ctrl-C at the terminal reaches hull, which
//! then tears down in order, not the helpers at random), dies with hull (parent-death
//! signal), and is killed when its handle is dropped, so no error path can orphan it.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot start {name} ({path}): {source}")]
    Spawn {
        name: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create log file {path} for {name}: {source}")]
    Log {
        name: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for {name} failed: {source}")]
    Wait {
        name: &'static str,
        source: std::io::Error,
    },
}

/// A running helper process.
#[derive(Debug)]
pub struct HelperProcess {
    name: &'static str,
    child: Child,
    stderr_log: PathBuf,
    status: Option<ExitStatus>,
}

impl HelperProcess {
    /// Starts `cmd` with stdin from /dev/null and stderr appended to `stderr_log`.
    /// stdout is left as the caller configured it.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        stderr_log: &Path,
    ) -> Result<HelperProcess, ChildError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_log)
            .map_err(|source| ChildError::Log {
                name,
                path: stderr_log.to_path_buf(),
                source,
            })?;
        cmd.stdin(Stdio::null()).stderr(log).kill_on_drop(true);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // async-signal-safe functions (prctl, getppid, setpgid) without allocating.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nothing would
                // ever send the signal.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let path = PathBuf::from(cmd.as_std().get_program());
        let child = cmd
            .spawn()
            .map_err(|source| ChildError::Spawn { name, path, source })?;
        tracing::debug!(name, pid = child.id(), "helper started");
        Ok(HelperProcess {
            name,
            child,
            stderr_log: stderr_log.to_path_buf(),
            status: None,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the process to exit (cancel-safe).
    pub async fn wait(&mut self) -> Result<ExitStatus, ChildError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let status = self.child.wait().await.map_err(|source| ChildError::Wait {
            name: self.name,
            source,
        })?;
        self.status = Some(status);
        Ok(status)
    }

    /// Non-blocking: the exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Asks the process to stop with SIGTERM, then SIGKILLs it after `grace`; always
    /// reaps it.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus, ChildError> {
        if let Some(s) = self.try_status() {
            return Ok(s);
        }
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(r) => r,
            Err(_) => self.kill().await,
        }
    }

    /// SIGKILLs the process and reaps it.
    pub async fn kill(&mut self) -> Result<ExitStatus, ChildError> {
        if let Some(s) = self.try_status() {
            return Ok(s);
        }
        let _ = self.child.start_kill();
        self.wait().await
    }

    /// The last `n` lines the process wrote to stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        tail_lines(&std::fs::read(&self.stderr_log).unwrap_or_default(), n)
    }
}

/// Stops a VM's processes: the hypervisor first (SIGTERM, SIGKILL after `grace`), then
/// its backends with a short grace (vhost-device-vsock outlives its VM, and virtiofsd
/// waits for one that never started). Every process is stopped; the first error is
/// returned.
pub async fn stop_vm_processes<'a>(
    hypervisor: Option<&mut HelperProcess>,
    grace: Duration,
    backends: impl Iterator<Item = &'a mut HelperProcess>,
) -> Result<(), ChildError> {
    let mut first_err = None;
    if let Some(h) = hypervisor {
        if let Err(e) = h.stop(grace).await {
            first_err.get_or_insert(e);
        }
    }
    for b in backends {
        if let Err(e) = b.stop(Duration::from_millis(500)).await {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The last lines of stderr of each process that wrote any, under its name: what a
/// backend adds to an error about its VM.
pub fn stderr_tails<'a>(processes: impl Iterator<Item = &'a HelperProcess>) -> String {
    let mut out = String::new();
    for p in processes {
        let tail = p.stderr_tail(10);
        if !tail.trim().is_empty() {
            out.push_str(&format!("\n--- {} stderr ---\n{}", p.name(), tail));
        }
    }
    out
}

impl Drop for HelperProcess {
    /// A helper that is still running when its handle goes (an error path, a cancelled
    /// boot, Ctrl-C) is SIGKILLed and reaped here, synchronously: when the drop returns
    /// the process can no longer create files in the VM's state dir, which is removed
    /// right after. A SIGKILLed process exits within milliseconds; the wait is bounded.
    fn drop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let _ = self.child.start_kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => return,
            }
        }
        tracing::warn!(
            name = self.name,
            pid = self.child.id(),
            "helper did not exit after SIGKILL"
        );
    }
}

/// The last `n` lines of `bytes`, lossily decoded.
pub fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Describes an exit status for an error message: "exit code 1" / "killed by SIGKILL".
pub fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        "unknown status".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines(b"a", 5), "a");
        assert_eq!(tail_lines(b"", 5), "");
    }

    #[tokio::test]
    async fn stop_kills_a_process_that_ignores_sigterm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; echo started >&2; sleep 30"]);
        let mut p = HelperProcess::spawn("test", cmd, &dir.path().join("err.log")).expect("spawn");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = p.stop(Duration::from_millis(200)).await.expect("stop");
        assert_eq!(describe_status(&st), "killed by SIGKILL");
        assert_eq!(p.stderr_tail(1), "started");
    }

    #[tokio::test]
    async fn dropping_the_handle_kills_and_reaps_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 30"]);
        let p = HelperProcess::spawn("test", cmd, &dir.path().join("err.log")).expect("spawn");
        let pid = nix::unistd::Pid::from_raw(p.pid().expect("pid") as i32);
        drop(p);
        // Reaped, not a zombie: the pid no longer exists at all.
        assert_eq!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH)
        );
    }

    #[tokio::test]
    async fn spawn_error_names_the_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = HelperProcess::spawn(
            "qemu",
            Command::new("/nonexistent/qemu"),
            &dir.path().join("e.log"),
        )
        .expect_err("must fail");
        assert!(e.to_string().contains("/nonexistent/qemu"), "{e}");
    }
}
