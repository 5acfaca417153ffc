//! Dialing the agent (hybrid vsock) and running one container to completion.

use std::time::{Duration, Instant};

use hull_proto::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::Res;

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(120))
}

#[derive(Clone)]
pub struct Agent {
    pub c: AgentServiceClient,
}

pub async fn connect(vm_sock: &str, timeout: Duration) -> Res<Agent> {
    let t0 = Instant::now();
    let announce = UnixListener::bind(format!("{vm_sock}_{ANNOUNCE_VSOCK_PORT}"))?;
    let (mut conn, _) = tokio::time::timeout(timeout, announce.accept()).await??;
    let mut line = String::new();
    conn.read_to_string(&mut line).await?;
    println!("probe: +{} ms announced {line:?}", t0.elapsed().as_millis());
    let mut stream = UnixStream::connect(vm_sock).await?;
    stream
        .write_all(format!("CONNECT {AGENT_VSOCK_PORT}\n").as_bytes())
        .await?;
    let mut reply = Vec::new();
    while reply.last() != Some(&b'\n') {
        reply.push(stream.read_u8().await?);
    }
    if !reply.starts_with(b"OK ") {
        return Err("hybrid vsock handshake refused".into());
    }
    let socket = ttrpc::r#async::transport::Socket::from(stream);
    let c = AgentServiceClient::new(ttrpc::r#async::Client::new(socket));
    Ok(Agent { c })
}

/// A runc-style spec (containerd's defaults: namespaces, mounts, masked and readonly
/// paths, capabilities) for the busybox rootfs in the share.
pub fn base_spec(args: &[&str]) -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "/run/hull/share/rootfs", "readonly": false},
        "hostname": "box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid","noexec","nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid","strictatime","mode=755","size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid","noexec","newinstance","ptmxmode=0666","mode=0620","gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid","noexec","nodev","mode=1777","size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid","noexec","nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid","noexec","nodev","ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid","noexec","nodev","relatime","ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid","nodev","mode=1777"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

pub fn stdio(stdin: bool, terminal: bool) -> StdioConfig {
    let mut s = StdioConfig::new();
    s.stdin = stdin;
    s.stdout = true;
    s.stderr = !terminal;
    s.terminal = terminal;
    s
}

/// What a finished process gave.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: i32,
    pub oom_killed: bool,
}

impl Outcome {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl Agent {
    pub async fn destroy(&self) -> Res<()> {
        let mut req = DestroySandboxRequest::new();
        req.timeout_secs = 2;
        self.c.destroy_sandbox(ctx(), &req).await?;
        Ok(())
    }

    pub async fn create(&self, id: &str, spec: &Value, stdio: StdioConfig) -> ttrpc::Result<Empty> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.oci_spec_json = serde_json::to_vec(spec).unwrap_or_default();
        req.stdio = protobuf::MessageField::some(stdio);
        self.c.create_container(ctx(), &req).await
    }

    pub async fn start(&self, id: &str) -> ttrpc::Result<Empty> {
        let mut req = StartContainerRequest::new();
        req.container_id = id.into();
        self.c.start_container(ctx(), &req).await
    }

    pub async fn remove(&self, id: &str) -> ttrpc::Result<Empty> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.into();
        req.timeout_secs = 5;
        self.c.remove_container(ctx(), &req).await
    }

    pub async fn write_stdin(&self, id: &str, exec: &str, data: &[u8]) -> ttrpc::Result<()> {
        let mut req = WriteStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        req.data = data.to_vec();
        self.c.write_stdin(ctx(), &req).await.map(|_| ())
    }

    pub async fn close_stdin(&self, id: &str, exec: &str) -> ttrpc::Result<()> {
        let mut req = ProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        self.c.close_stdin(ctx(), &req).await.map(|_| ())
    }

    pub async fn signal(&self, id: &str, exec: &str, sig: u32, all: bool) -> ttrpc::Result<()> {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        req.signal = sig;
        req.all = all;
        self.c.signal_process(ctx(), &req).await.map(|_| ())
    }

    /// Reads one stream to EOF.
    pub async fn drain(&self, id: &str, exec: &str, stderr: bool) -> ttrpc::Result<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            let mut req = ReadStreamRequest::new();
            req.container_id = id.into();
            req.exec_id = exec.into();
            req.len = 1 << 20;
            let r = if stderr {
                self.c.read_stderr(ctx(), &req).await?
            } else {
                self.c.read_stdout(ctx(), &req).await?
            };
            if r.eof {
                return Ok(all);
            }
            all.extend_from_slice(&r.data);
        }
    }

    /// Drains stdout and stderr to EOF, then waits for the exit.
    pub async fn collect(&self, id: &str, exec: &str) -> ttrpc::Result<Outcome> {
        let (out, err) = tokio::join!(self.drain(id, exec, false), self.drain(id, exec, true));
        let mut req = ProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        let w = self.c.wait_process(ctx(), &req).await?;
        Ok(Outcome {
            stdout: out?,
            stderr: err?,
            status: w.status,
            oom_killed: w.oom_killed,
        })
    }

    /// Create, start, collect, remove.
    pub async fn run(&self, id: &str, spec: &Value) -> ttrpc::Result<Outcome> {
        self.create(id, spec, stdio(false, false)).await?;
        self.start(id).await?;
        let outcome = self.collect(id, "").await;
        let removed = self.remove(id).await;
        let outcome = outcome?;
        removed?;
        Ok(outcome)
    }
}
