//! Typed requests about containers and their processes. Blocking requests
//! (WaitProcess, and reads, which wait for data) carry no deadline: they end when the
//! process does or when the connection to the VM breaks.

use std::time::Duration;

use oci_spec::runtime::{LinuxResources, Process, Spec};

use super::{convert, AgentClient, AgentError, ExitInfo, StdioSpec, StorageSpec};

/// A container's cgroup v2 statistics, as the agent reports them (the shape of
/// containerd's `io.containerd.cgroups.v2.Metrics`; `shim::convert` maps it).
pub use hull_proto::StatsContainerResponse as ContainerStats;

/// Which output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One process of a container: its init (`exec_id` empty) or an exec'd process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRef {
    pub container_id: String,
    pub exec_id: String,
}

impl ProcessRef {
    /// The container's init process.
    pub fn init(container_id: &str) -> ProcessRef {
        ProcessRef {
            container_id: container_id.to_string(),
            exec_id: String::new(),
        }
    }

    pub fn exec(container_id: &str, exec_id: &str) -> ProcessRef {
        ProcessRef {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        }
    }
}

/// Guest data is bounded: a read never returns more than this, whatever the agent says.
pub const MAX_READ: u32 = 128 * 1024;

/// Calls `$rpc` with no deadline.
macro_rules! call_blocking {
    ($self:ident, $rpc:ident, $req:expr) => {{
        let ctx = ttrpc::context::Context::default();
        $self
            .inner
            .$rpc(ctx, &$req)
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: stringify!($rpc),
                source,
            })
    }};
}

impl AgentClient {
    /// Prepares the sandbox: hostname, the storages to mount (the share), and whether
    /// debug processes (`hull debug exec`) are allowed for its whole life, and an agent
    /// policy document (TOML) that tightens the guest image's (the agent seals it).
    pub async fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        storages: &[StorageSpec],
        debug_exec: bool,
        policy: Option<&str>,
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::CreateSandboxRequest::new();
        req.debug_exec = debug_exec;
        req.policy = policy.unwrap_or_default().to_string();
        req.sandbox_id = sandbox_id.to_string();
        req.hostname = hostname.to_string();
        req.storages = storages.iter().map(convert::storage).collect();
        call!(self, create_sandbox, req)?;
        Ok(())
    }

    /// CreateContainer of a container of its own (no pod), with the guest mounts
    /// `storages` made for it first.
    pub async fn create_container(
        &self,
        container_id: &str,
        spec: &Spec,
        storages: &[StorageSpec],
        stdio: &StdioSpec,
    ) -> Result<(), AgentError> {
        self.create_pod_container(container_id, spec, storages, stdio, "", &[])
            .await
    }

    /// CreateContainer for a container of a pod whose sandbox (pause) container is
    /// `sandbox_container_id` (empty: none), sharing that container's
    /// `sandbox_namespaces` ("ipc", "uts", "pid") in the guest.
    pub async fn create_pod_container(
        &self,
        container_id: &str,
        spec: &Spec,
        storages: &[StorageSpec],
        stdio: &StdioSpec,
        sandbox_container_id: &str,
        sandbox_namespaces: &[&str],
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::CreateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.storages = storages.iter().map(convert::storage).collect();
        req.sandbox_container_id = sandbox_container_id.to_string();
        req.sandbox_namespaces = sandbox_namespaces.iter().map(|n| n.to_string()).collect();
        req.oci_spec_json = to_json(spec, "create_container", "OCI spec")?;
        req.stdio = protobuf::MessageField::some(convert::stdio(stdio));
        call!(self, create_container, req)?;
        Ok(())
    }

    pub async fn start_container(&self, container_id: &str) -> Result<(), AgentError> {
        let mut req = hull_proto::StartContainerRequest::new();
        req.container_id = container_id.to_string();
        call!(self, start_container, req)?;
        Ok(())
    }

    pub async fn remove_container(
        &self,
        container_id: &str,
        timeout_secs: u32,
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::RemoveContainerRequest::new();
        req.container_id = container_id.to_string();
        req.timeout_secs = timeout_secs;
        call!(self, remove_container, req)?;
        Ok(())
    }

    /// Starts an extra process `exec_id` in a running container. An empty `container_id` starts a debug process in the guest itself
    /// (allowed only in a sandbox created with `debug_exec`).
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: &Process,
        stdio: &StdioSpec,
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::ExecProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.process_json = to_json(process, "exec_process", "OCI process")?;
        req.stdio = protobuf::MessageField::some(convert::stdio(stdio));
        call!(self, exec_process, req)?;
        Ok(())
    }

    /// Reads up to `len` bytes of a process's output: `(data, eof)`.
    pub async fn read_stream(
        &self,
        container_id: &str,
        exec_id: &str,
        stream: Stream,
        len: u32,
    ) -> Result<(Vec<u8>, bool), AgentError> {
        let mut req = hull_proto::ReadStreamRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.len = len.min(MAX_READ);
        let reply = match stream {
            Stream::Stdout => call_blocking!(self, read_stdout, req)?,
            Stream::Stderr => call_blocking!(self, read_stderr, req)?,
        };
        if reply.data.len() > req.len as usize {
            return Err(AgentError::BadReply {
                rpc: "read_stream",
                what: format!(
                    "{} bytes for a read of at most {}",
                    reply.data.len(),
                    req.len
                ),
            });
        }
        Ok((reply.data, reply.eof))
    }

    /// Writes to a process's stdin; returns how many bytes the agent took.
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, AgentError> {
        let mut req = hull_proto::WriteStreamRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.data = data.to_vec();
        let reply = call_blocking!(self, write_stdin, req)?;
        let n = reply.len as usize;
        if n > data.len() {
            return Err(AgentError::BadReply {
                rpc: "write_stdin",
                what: format!("took {n} of {} bytes", data.len()),
            });
        }
        Ok(n)
    }

    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), AgentError> {
        let mut req = hull_proto::ProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        call!(self, close_stdin, req)?;
        Ok(())
    }

    /// Waits for a process to exit (after its output pipes reached EOF in the agent).
    pub async fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<ExitInfo, AgentError> {
        let mut req = hull_proto::ProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        let reply = call_blocking!(self, wait_process, req)?;
        Ok(convert::exit(&reply))
    }

    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::SignalProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.signal = u32::try_from(signal).map_err(|_| AgentError::BadReply {
            rpc: "signal_process",
            what: format!("invalid signal {signal}"),
        })?;
        req.all = all;
        call!(self, signal_process, req)?;
        Ok(())
    }

    pub async fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u16,
        columns: u16,
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::ResizeTtyRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.rows = rows.into();
        req.columns = columns.into();
        call!(self, resize_tty, req)?;
        Ok(())
    }

    pub async fn pause_container(&self, container_id: &str) -> Result<(), AgentError> {
        let mut req = hull_proto::ContainerRequest::new();
        req.container_id = container_id.to_string();
        call!(self, pause_container, req)?;
        Ok(())
    }

    pub async fn resume_container(&self, container_id: &str) -> Result<(), AgentError> {
        let mut req = hull_proto::ContainerRequest::new();
        req.container_id = container_id.to_string();
        call!(self, resume_container, req)?;
        Ok(())
    }

    /// New cgroup limits.
    pub async fn update_container(
        &self,
        container_id: &str,
        resources: &LinuxResources,
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::UpdateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.resources_json = to_json(resources, "update_container", "OCI resources")?;
        call!(self, update_container, req)?;
        Ok(())
    }

    /// The container's cgroup v2 statistics.
    pub async fn stats_container(&self, container_id: &str) -> Result<ContainerStats, AgentError> {
        let mut req = hull_proto::ContainerRequest::new();
        req.container_id = container_id.to_string();
        call!(self, stats_container, req)
    }

    /// The container's processes: `(pid in the container, exec id)`.
    pub async fn list_processes(
        &self,
        container_id: &str,
    ) -> Result<Vec<(i32, String)>, AgentError> {
        let mut req = hull_proto::ContainerRequest::new();
        req.container_id = container_id.to_string();
        let reply = call!(self, list_processes, req)?;
        Ok(reply
            .processes
            .into_iter()
            .map(|p| (p.pid, p.exec_id))
            .collect())
    }

    /// Waits (no deadline) for the next OOM kill in the sandbox; the container's id.
    pub async fn next_oom_event(&self) -> Result<String, AgentError> {
        let req = hull_proto::GetOomEventRequest::new();
        let reply = call_blocking!(self, get_oom_event, req)?;
        Ok(reply.container_id)
    }

    /// The request timeout, for callers that bound their own waits by it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The wire form of an OCI value: JSON, as the agent reads it.
fn to_json(
    value: &impl serde::Serialize,
    rpc: &'static str,
    what: &'static str,
) -> Result<Vec<u8>, AgentError> {
    serde_json::to_vec(value).map_err(|source| AgentError::Encode { rpc, what, source })
}
