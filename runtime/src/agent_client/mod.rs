//! The host's side of the agent API: waits for the agent's announcement, dials it over
//! hybrid vsock and wraps the generated ttrpc client with timeouts and reply checks.
//!
//! Protocol types (`hull_proto`) stop here and in `convert`: callers above get plain
//! Rust values.

pub mod convert;
pub mod hybrid_vsock;
pub mod pump;

use std::path::Path;
use std::time::Duration;

use crate::metrics::RpcLatency;
use hull_proto::{AgentServiceClient, API_VERSION};
use tokio::io::AsyncReadExt;

pub use container::{ContainerStats, ProcessRef, Stream, MAX_READ};
pub use hybrid_vsock::{GuestListener, VsockError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("the agent's announcement was malformed: {0}")]
    BadAnnouncement(String),
    #[error("the agent speaks API version {agent}, this runtime speaks {API_VERSION}")]
    ApiMismatch { agent: u32 },
    #[error("agent request {rpc} failed: {}", describe_rpc_error(source))]
    Rpc {
        rpc: &'static str,
        source: ttrpc::Error,
    },
    #[error("agent request {rpc} timed out after {timeout:?}")]
    Timeout {
        rpc: &'static str,
        timeout: Duration,
    },
    #[error("agent reply to {rpc} is invalid: {what}")]
    BadReply { rpc: &'static str, what: String },
    #[error("agent request {rpc}: cannot encode the {what} as JSON: {source}")]
    Encode {
        rpc: &'static str,
        what: &'static str,
        source: serde_json::Error,
    },
}

/// A ttrpc error in one line: `CODE: message` for a status from the agent.
pub fn describe_rpc_error(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            let code = s
                .code
                .enum_value()
                .map(|c| format!("{c:?}"))
                .unwrap_or_else(|v| v.to_string());
            format!("{code}: {}", s.message)
        }
        other => other.to_string(),
    }
}

/// Reads the agent's `HULL-AGENT-READY <api>\n` line from an announce connection.
pub async fn read_announcement(
    stream: &mut tokio::net::UnixStream,
    timeout: Duration,
) -> Result<u32, AgentError> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 64];
        while !buf.contains(&b'\n') && buf.len() < 256 {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(AgentError::BadAnnouncement(e)),
        Err(_) => {
            return Err(AgentError::BadAnnouncement(
                "no line within the timeout".into(),
            ))
        }
    }
    parse_announcement(&buf)
}

/// Validates an announcement line and returns the agent's API version.
pub fn parse_announcement(bytes: &[u8]) -> Result<u32, AgentError> {
    let bad = |what: &str| {
        AgentError::BadAnnouncement(format!("{what}: {:?}", String::from_utf8_lossy(bytes)))
    };
    let line = bytes
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or_else(|| bad("not text"))?;
    let mut words = line.split_whitespace();
    if words.next() != Some(hull_proto::ANNOUNCE_PREFIX) {
        return Err(bad("wrong prefix"));
    }
    let api: u32 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad("no API version"))?;
    if api != API_VERSION {
        return Err(AgentError::ApiMismatch { agent: api });
    }
    Ok(api)
}

/// What the agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersion {
    pub agent_version: String,
    pub api_version: u32,
    pub kernel_release: String,
    pub uptime: Duration,
}

/// A storage for the guest to mount (see `Storage` in agent.proto).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorageSpec {
    pub driver: String,
    pub source: String,
    pub fstype: String,
    pub options: Vec<String>,
    pub mount_point: String,
    pub readonly: bool,
}

impl StorageSpec {
    /// A virtio-fs share with device tag `tag`, mounted at `mount_point`.
    pub fn virtiofs_share(tag: &str, mount_point: &str) -> StorageSpec {
        StorageSpec {
            driver: "virtiofs".into(),
            source: tag.into(),
            fstype: "virtiofs".into(),
            options: Vec::new(),
            mount_point: mount_point.into(),
            readonly: false,
        }
    }

    /// The virtio-blk disk with serial `serial`, a `fstype` filesystem mounted at
    /// `mount_point`.
    pub fn disk(serial: &str, fstype: &str, mount_point: &str) -> StorageSpec {
        StorageSpec {
            driver: "blk".into(),
            source: serial.into(),
            fstype: fstype.into(),
            options: vec!["noatime".into()],
            mount_point: mount_point.into(),
            readonly: false,
        }
    }

    /// An overlay at `mount_point`: `lower` read-only below, its writes in `upper`
    /// (`work` is overlayfs's own).
    pub fn overlay(lower: &str, upper: &str, work: &str, mount_point: &str) -> StorageSpec {
        StorageSpec {
            driver: "overlay".into(),
            source: "overlay".into(),
            fstype: "overlay".into(),
            options: vec![
                format!("lowerdir={lower}"),
                format!("upperdir={upper}"),
                format!("workdir={work}"),
            ],
            mount_point: mount_point.into(),
            readonly: false,
        }
    }
}

/// Which stdio streams a process gets, and whether they are a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StdioSpec {
    pub terminal: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal number.
    pub status: i32,
    /// Killed by the guest kernel's OOM killer.
    pub oom_killed: bool,
}

/// What `GuestStats` said, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestStats {
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub containers: u32,
}

/// A connected agent.
#[derive(Clone)]
pub struct AgentClient {
    inner: AgentServiceClient,
    timeout: Duration,
    /// How long each RPC took, per RPC (for `hull monitor`).
    latency: RpcLatency,
}

/// Calls `$rpc` on the generated client with a deadline, mapping errors.
/// Fills `buf` from the kernel's CSPRNG (getrandom(2), blocking until it is seeded).
fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which is a
        // live, writable slice for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

macro_rules! call {
    ($self:ident, $rpc:ident, $req:expr) => {{
        let ctx = ttrpc::context::with_timeout($self.timeout.as_nanos() as i64);
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(
            $self.timeout + Duration::from_secs(1),
            $self.inner.$rpc(ctx, &$req),
        )
        .await;
        $self.latency.observe(stringify!($rpc), started.elapsed());
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(source)) => Err(AgentError::Rpc {
                rpc: stringify!($rpc),
                source,
            }),
            Err(_) => Err(AgentError::Timeout {
                rpc: stringify!($rpc),
                timeout: $self.timeout,
            }),
        }
    }};
}

impl AgentClient {
    /// Dials the agent on its vsock port through the hybrid vsock socket `uds`.
    pub async fn connect(uds: &Path, timeout: Duration) -> Result<AgentClient, AgentError> {
        let stream = hybrid_vsock::connect(uds, hull_proto::AGENT_VSOCK_PORT, timeout).await?;
        let socket = ttrpc::r#async::transport::Socket::from(stream);
        let client = ttrpc::r#async::Client::new(socket);
        Ok(AgentClient {
            inner: AgentServiceClient::new(client),
            timeout,
            latency: RpcLatency::default(),
        })
    }

    /// A client over an already connected stream (the agent's tests, fake agents).
    pub fn from_stream(stream: tokio::net::UnixStream, timeout: Duration) -> AgentClient {
        let socket = ttrpc::r#async::transport::Socket::from(stream);
        AgentClient {
            inner: AgentServiceClient::new(ttrpc::r#async::Client::new(socket)),
            timeout,
            latency: RpcLatency::default(),
        }
    }

    /// The latency of the RPCs made through this client and its clones.
    pub fn latency(&self) -> &RpcLatency {
        &self.latency
    }

    /// The guest's memory and container count. The guest is not trusted: what it
    /// claims is checked for sense, not believed.
    pub async fn guest_stats(&self) -> Result<GuestStats, AgentError> {
        let reply = call!(self, guest_stats, hull_proto::Empty::new())?;
        if reply.mem_total_bytes == 0 || reply.mem_available_bytes > reply.mem_total_bytes {
            return Err(AgentError::BadReply {
                rpc: "guest_stats",
                what: format!(
                    "{} bytes available of {} in all",
                    reply.mem_available_bytes, reply.mem_total_bytes
                ),
            });
        }
        Ok(GuestStats {
            mem_total_bytes: reply.mem_total_bytes,
            mem_available_bytes: reply.mem_available_bytes,
            containers: reply.containers,
        })
    }

    /// Health check: succeeds only if the agent says it is serving.
    pub async fn check(&self) -> Result<(), AgentError> {
        let reply = call!(self, check, hull_proto::CheckRequest::new())?;
        use hull_proto::health_check_response::ServingStatus;
        match reply.status.enum_value() {
            Ok(ServingStatus::SERVING) => Ok(()),
            other => Err(AgentError::BadReply {
                rpc: "check",
                what: format!("status {other:?}"),
            }),
        }
    }

    /// SetIdentity: what makes a clone restored from a template its own VM (fresh
    /// entropy from the host's getrandom, the wall clock, the sandbox id and hostname).
    /// Returns the guest's boot_id (each clone's own: made on its first read).
    pub async fn set_identity(
        &self,
        sandbox_id: &str,
        hostname: &str,
    ) -> Result<String, AgentError> {
        let mut entropy = vec![0u8; 64];
        getrandom_fill(&mut entropy).map_err(|e| AgentError::BadReply {
            rpc: "set_identity",
            what: format!("no host entropy to send: {e}"),
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let req = hull_proto::SetIdentityRequest {
            entropy,
            wall_clock_unix_ns: i64::try_from(now.as_nanos()).unwrap_or(i64::MAX),
            sandbox_id: sandbox_id.to_string(),
            hostname: hostname.to_string(),
            ..Default::default()
        };
        let reply = call!(self, set_identity, req)?;
        let id = &reply.boot_id;
        // The guest is not trusted: a boot_id is a UUID, nothing longer or stranger.
        if id.len() > 36 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(AgentError::BadReply {
                rpc: "set_identity",
                what: format!("boot_id {id:?} is not a UUID"),
            });
        }
        Ok(id.clone())
    }

    /// PrepareCaches: the guest compiles each seccomp profile (OCI JSON) now.
    /// Returns how many it holds compiled.
    pub async fn prepare_caches(&self, seccomp_profiles: &[String]) -> Result<u32, AgentError> {
        let req = hull_proto::PrepareCachesRequest {
            seccomp_profiles: seccomp_profiles.to_vec(),
            ..Default::default()
        };
        let reply = call!(self, prepare_caches, req)?;
        if reply.seccomp_compiled as usize != seccomp_profiles.len() {
            return Err(AgentError::BadReply {
                rpc: "prepare_caches",
                what: format!(
                    "{} profiles compiled of {}",
                    reply.seccomp_compiled,
                    seccomp_profiles.len()
                ),
            });
        }
        Ok(reply.seccomp_compiled)
    }

    pub async fn version(&self) -> Result<AgentVersion, AgentError> {
        let reply = call!(self, version, hull_proto::CheckRequest::new())?;
        let bad = |what: String| AgentError::BadReply {
            rpc: "version",
            what,
        };
        // The guest is not trusted: bound what we print and keep.
        for (name, v) in [
            ("agent_version", &reply.agent_version),
            ("kernel_release", &reply.kernel_release),
        ] {
            if v.is_empty() || v.len() > 128 || v.chars().any(|c| c.is_control()) {
                return Err(bad(format!("{name} {v:?} is not a short printable string")));
            }
        }
        if reply.api_version != API_VERSION {
            return Err(AgentError::ApiMismatch {
                agent: reply.api_version,
            });
        }
        Ok(AgentVersion {
            agent_version: reply.agent_version,
            api_version: reply.api_version,
            kernel_release: reply.kernel_release,
            uptime: Duration::from_millis(reply.uptime_ms),
        })
    }

    /// Asks the agent to stop everything and power the VM off.
    pub async fn destroy_sandbox(&self, timeout_secs: u32) -> Result<(), AgentError> {
        let mut req = hull_proto::DestroySandboxRequest::new();
        req.timeout_secs = timeout_secs;
        call!(self, destroy_sandbox, req)?;
        Ok(())
    }

    /// Fault injection: the agent replies, then aborts (only in a sandbox that allows
    /// debug processes); the guest kernel panics and the VM stops.
    pub async fn debug_crash_agent(&self) -> Result<(), AgentError> {
        call!(self, debug_crash_agent, hull_proto::Empty::new())?;
        Ok(())
    }
}

mod container;
mod network;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements() {
        assert_eq!(
            parse_announcement(format!("HULL-AGENT-READY {API_VERSION}\n").as_bytes()).expect("ok"),
            API_VERSION
        );
        assert!(matches!(
            parse_announcement(b"HULL-AGENT-READY 999\n"),
            Err(AgentError::ApiMismatch { agent: 999 })
        ));
        assert!(parse_announcement(b"HELLO 1\n").is_err());
        assert!(parse_announcement(b"HULL-AGENT-READY\n").is_err());
        assert!(parse_announcement(b"\xff\xfe").is_err());
    }
}
