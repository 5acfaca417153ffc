//! containerd's `binary://` log URIs: a logging binary gets a process's output.
//!
//! The contract is containerd's (`pkg/process/io.go` NewBinaryIO in the runc shim):
//! `binary:///path/to/bin?key=val&flag` starts `/path/to/bin key val flag ""` (each
//! query key, then its first value) with only `CONTAINER_ID` and `CONTAINER_NAMESPACE`
//! in its environment; fd 3 is the read end of the stdout pipe, fd 4 of the stderr
//! pipe, fd 5 the write end of a readiness pipe that the binary writes a byte to or
//! closes once it is ready. The shim waits for that before the process may write. The
//! output pumps close their pipe ends at EOF; on task delete the logger gets the time
//! to finish, then SIGTERM, then SIGKILL (its whole process group, so a script's
//! children go too).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::ShimError;

/// The scheme prefix.
pub const SCHEME: &str = "binary://";
/// How long the logger may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a logger whose inputs ended gets to exit by itself at delete.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How long it gets after SIGTERM (containerd's binaryIOProcTermTimeout is 12 s).
const TERM_GRACE: Duration = Duration::from_secs(12);

/// A parsed `binary://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerCommand {
    pub path: PathBuf,
    pub args: Vec<String>,
}

pub fn is_binary(uri: &str) -> bool {
    uri.starts_with(SCHEME)
}

fn bad_uri(uri: &str, why: &str) -> ShimError {
    ShimError::InvalidArgument(format!("log URI {uri:?}: {why}"))
}

/// `%XX` and (in the query) `+` decoding, as Go's url package does.
fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The binary and its arguments for `uri`.
pub fn parse(uri: &str) -> Result<LoggerCommand, ShimError> {
    let rest = uri
        .strip_prefix(SCHEME)
        .ok_or_else(|| bad_uri(uri, "not a binary:// URI"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = decode(path, false).ok_or_else(|| bad_uri(uri, "bad %-escape in the path"))?;
    if !path.starts_with('/') {
        return Err(bad_uri(
            uri,
            "the binary must be an absolute path (binary:///path/to/bin)",
        ));
    }
    let mut args = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k, true).ok_or_else(|| bad_uri(uri, "bad %-escape in the query"))?;
        let v = decode(v, true).ok_or_else(|| bad_uri(uri, "bad %-escape in the query"))?;
        // containerd passes each key once, with its first value.
        if seen.insert(k.clone()) {
            args.push(k);
            args.push(v);
        }
    }
    Ok(LoggerCommand {
        path: PathBuf::from(path),
        args,
    })
}

/// A running logging binary and the shim's write ends of its stdout and stderr pipes.
pub struct BinaryLogger {
    child: Option<tokio::process::Child>,
    pgid: i32,
}

/// A pipe end moved above the fds 3-5 the child gets, close-on-exec.
fn high_fd(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let raw = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(std::io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

fn sender(fd: OwnedFd) -> Result<pipe::Sender, ShimError> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)
        .map_err(|e| ShimError::Internal(format!("logger pipe: {e}")))?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| ShimError::Internal(format!("logger pipe: {e}")))?;
    pipe::Sender::from_owned_fd(fd).map_err(|e| ShimError::Internal(format!("logger pipe: {e}")))
}

impl BinaryLogger {
    /// Starts the logger for `uri` and waits until it is ready. Returns it with the
    /// write ends of its stdout (fd 3) and stderr (fd 4) pipes.
    pub async fn start(
        uri: &str,
        container_id: &str,
        namespace: &str,
    ) -> Result<(BinaryLogger, pipe::Sender, pipe::Sender), ShimError> {
        let cmd = parse(uri)?;
        let io = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| ShimError::Internal(format!("logger {what}: {e}"))
        };
        let (out_r, out_w) = pipe_pair().map_err(io("stdout pipe"))?;
        let (err_r, err_w) = pipe_pair().map_err(io("stderr pipe"))?;
        let (ready_r, ready_w) = pipe_pair().map_err(io("ready pipe"))?;
        let fds: [OwnedFd; 3] = [
            high_fd(out_r).map_err(io("fd"))?,
            high_fd(err_r).map_err(io("fd"))?,
            high_fd(ready_w).map_err(io("fd"))?,
        ];
        let raw: [RawFd; 3] = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
        let mut command = tokio::process::Command::new(&cmd.path);
        command
            .args(&cmd.args)
            .env_clear()
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        // SAFETY: runs in the forked child before exec; dup2 is async-signal-safe. The
        // sources are >= 10 (high_fd), so no dup2 overwrites a later source, and dup2's
        // targets 3, 4, 5 are not close-on-exec.
        unsafe {
            command.pre_exec(move || {
                for (target, src) in (3..).zip(raw) {
                    if libc::dup2(src, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            ShimError::InvalidArgument(format!(
                "log URI {uri:?}: cannot start {}: {e}",
                cmd.path.display()
            ))
        })?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        drop(fds);
        let mut logger = BinaryLogger {
            child: Some(child),
            pgid,
        };
        let ready = async {
            let mut rx = pipe::Receiver::from_owned_fd(ready_r).map_err(io("ready pipe"))?;
            let mut b = [0u8; 1];
            // A byte or EOF (the binary closed fd 5): ready.
            rx.read(&mut b).await.map_err(io("ready pipe"))?;
            Ok::<_, ShimError>(())
        };
        let result = match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(r) => r,
            Err(_) => Err(ShimError::Internal(format!(
                "logging binary {} did not report ready (fd 5) within {READY_TIMEOUT:?}",
                cmd.path.display()
            ))),
        };
        if let Err(e) = result {
            logger.stop().await;
            return Err(e);
        }
        Ok((logger, sender(out_w)?, sender(err_w)?))
    }

    /// Ends the logger: it gets [`EXIT_GRACE`] to exit by itself (its inputs ended),
    /// then SIGTERM, then SIGKILL, each to its process group; it is reaped.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if tokio::time::timeout(EXIT_GRACE, child.wait()).await.is_ok() {
            self.signal_group(nix::sys::signal::Signal::SIGKILL);
            return;
        }
        self.signal_group(nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(TERM_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pid = self.pgid,
                "logging binary ignored SIGTERM; killing it"
            );
            self.signal_group(nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait().await;
        }
        self.signal_group(nix::sys::signal::Signal::SIGKILL);
    }

    /// Signals what is left of the logger's process group (its children included).
    fn signal_group(&self, sig: nix::sys::signal::Signal) {
        if self.pgid > 0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pgid), sig);
        }
    }
}

impl Drop for BinaryLogger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Not stopped through `stop` (an error path): end it now.
            self.signal_group(nix::sys::signal::Signal::SIGKILL);
            let _ = child.start_kill();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = child.wait().await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_parsed_as_containerd_does() {
        let c = parse("binary:///usr/bin/logger?id=abc&mode=a%20b&flag").expect("parse");
        assert_eq!(c.path, PathBuf::from("/usr/bin/logger"));
        assert_eq!(c.args, vec!["id", "abc", "mode", "a b", "flag", ""]);
        let c = parse("binary:///bin/l%20x").expect("escaped path");
        assert_eq!(c.path, PathBuf::from("/bin/l x"));
        assert!(parse("binary:///bin/l?a=1&a=2").expect("dup").args == vec!["a", "1"]);
        let e = parse("binary://relative/bin").expect_err("relative");
        assert!(e.to_string().contains("absolute"), "{e}");
        assert!(parse("binary:///bin/l?a=%zz").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_logger_gets_the_output_and_its_environment() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("out");
        let script = dir.path().join("logger.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\n{{ echo \"$CONTAINER_ID $CONTAINER_NAMESPACE $1 $2\"; cat <&3; cat <&4; }} > {}\n",
                out.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let uri = format!("binary://{}?k=v", script.display());
        let (mut logger, mut o, mut e) =
            BinaryLogger::start(&uri, "c1", "ns1").await.expect("start");
        use tokio::io::AsyncWriteExt;
        o.write_all(b"to stdout\n").await.expect("write");
        e.write_all(b"to stderr\n").await.expect("write");
        drop((o, e));
        logger.stop().await;
        let text = std::fs::read_to_string(&out).expect("log");
        assert_eq!(text, "c1 ns1 k v\nto stdout\nto stderr\n");

        let e = BinaryLogger::start("binary:///nonexistent/logger", "c1", "ns")
            .await
            .err()
            .expect("missing");
        assert!(e.to_string().contains("/nonexistent/logger"), "{e}");
    }
}
