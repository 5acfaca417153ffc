//! Typed requests about containers and their processes. Blocking requests
//! (WaitProcess, and reads, which wait for data) carry no deadline: they end when the
//! process does or when the connection to the VM breaks.

use std::time::Duration;

use super::{convert, AgentClient, AgentError, ExitInfo, StdioSpec, StorageSpec};

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
    /// Prepares the sandbox: hostname and the storages to mount (the share).
    pub async fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        storages: &[StorageSpec],
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::CreateSandboxRequest::new();
        req.sandbox_id = sandbox_id.to_string();
        req.hostname = hostname.to_string();
        req.storages = storages.iter().map(convert::storage).collect();
        call!(self, create_sandbox, req)?;
        Ok(())
    }

    pub async fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: Vec<u8>,
        stdio: &StdioSpec,
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::CreateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.oci_spec_json = oci_spec_json;
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

    /// Starts an extra process `exec_id` in a running container; `process_json` is an
    /// OCI `Process`.
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: &StdioSpec,
    ) -> Result<(), AgentError> {
        let mut req = hull_proto::ExecProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.process_json = process_json;
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

    /// The request timeout, for callers that bound their own waits by it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
