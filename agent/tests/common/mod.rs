//! Runs the real `hull-agent` binary as a plain process on a unix socket.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hull_proto::AgentServiceClient;

/// How long a test waits for the agent to come up, answer or exit.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hull-agent-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent process; killed on drop if still running.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Removed when the agent is dropped.
    _dir: TempDir,
}

impl Agent {
    /// Starts the agent listening on `<tempdir>/agent.sock`, with `extra` arguments.
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_in(TempDir::new(), extra)
    }

    pub fn start_in(dir: TempDir, extra: &[&str]) -> Agent {
        let socket = dir.0.join("agent.sock");
        let log = dir.0.join("agent.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hull-agent"))
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .args(["--log", "debug"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Agent {
            child,
            socket,
            log,
            _dir: dir,
        }
    }

    /// A client, once the agent accepts connections.
    pub async fn client(&mut self) -> AgentServiceClient {
        let deadline = Instant::now() + PATIENCE;
        let addr = format!("unix://{}", self.socket.display());
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("agent exited early with {st}; log:\n{}", self.log_text());
            }
            if self.socket.exists() {
                if let Ok(c) = ttrpc::r#async::Client::connect(&addr).await {
                    return AgentServiceClient::new(c);
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent never listened; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the agent to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A ttrpc call context with a deadline.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(10))
}

/// Binds a unix listener at `path` (for the announcement).
pub fn listen(path: &Path) -> UnixListener {
    UnixListener::bind(path).unwrap()
}
