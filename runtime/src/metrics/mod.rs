//! What hull measures for Prometheus, and where it keeps it between scrapes.
//!
//! Two files, both read by `hull monitor` (see [`crate::monitor`]):
//! - `<vm state dir>/metrics.json` ([`SandboxMetrics`]): written by the sandbox's owner
//!   (the shim or `hull run`): its boot report, and the latency of every agent RPC it
//!   made, per RPC. Rewritten (atomically) at most every 200 ms while RPCs happen; it
//!   goes with the state dir.
//! - `<state dir>/metrics/boot-phases.json` ([`BootPhases`]): one histogram per boot
//!   phase over every sandbox booted on this node since the state dir was made (it is on
//!   a tmpfs: since boot). Each boot adds itself under a lock, so the counts only grow,
//!   as a Prometheus histogram's must.

pub mod exposition;
mod histogram;

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use histogram::Histogram;

/// How long the sandbox's file may lag behind its RPCs.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(200);

/// The per-sandbox file in a VM state dir.
pub const SANDBOX_FILE: &str = "metrics.json";
/// The node's boot histograms, under the state dir.
pub const BOOT_PHASES_FILE: &str = "metrics/boot-phases.json";

/// Upper bounds (seconds) of agent RPC latency buckets: from a health check to a
/// container start that waits for its mounts (the long polls, WaitProcess, GetOomEvent
/// and the stdio streams, last as long as a process does and are not timed).
pub const RPC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds (seconds) of boot phase buckets: a KVM boot takes a fraction of a
/// second, a TCG one seconds, a nested one tens of seconds.
pub const BOOT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a metrics file of this hull: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One boot, phase by phase, in seconds from the launch of the hypervisor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootSeconds {
    pub backend: String,
    /// The hypervisor process and its helpers were started.
    pub processes: f64,
    /// The kernel banner was on the console (not every backend's console shows it).
    pub kernel: Option<f64>,
    /// The agent's first console line.
    pub init: Option<f64>,
    /// The agent announced itself over vsock.
    pub agent_ready: f64,
    /// The host was connected and the agent answered a health check.
    pub connected: f64,
}

impl BootSeconds {
    /// `(phase, seconds)` for each phase the boot reached, in boot order.
    pub fn phases(&self) -> Vec<(&'static str, f64)> {
        [
            ("processes", Some(self.processes)),
            ("kernel", self.kernel),
            ("init", self.init),
            ("agent_ready", Some(self.agent_ready)),
            ("connected", Some(self.connected)),
        ]
        .into_iter()
        .filter_map(|(name, s)| s.map(|s| (name, s)))
        .collect()
    }
}

/// `<vm state dir>/metrics.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxMetrics {
    pub boot: BootSeconds,
    /// Agent RPC latency by RPC name (the client's method: `create_container`, ...).
    pub rpc: BTreeMap<String, Histogram>,
}

impl SandboxMetrics {
    pub fn read(dir: &Path) -> Result<SandboxMetrics, MetricsError> {
        read_json(&dir.join(SANDBOX_FILE))
    }
}

/// `<state dir>/metrics/boot-phases.json`: a histogram per phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootPhases {
    pub phases: BTreeMap<String, Histogram>,
}

impl BootPhases {
    pub fn read(state_dir: &Path) -> Result<BootPhases, MetricsError> {
        match read_json(&state_dir.join(BOOT_PHASES_FILE)) {
            Err(MetricsError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(BootPhases::default())
            }
            other => other,
        }
    }

    pub fn observe(&mut self, boot: &BootSeconds) {
        for (phase, seconds) in boot.phases() {
            self.phases
                .entry(phase.to_string())
                .or_insert_with(|| Histogram::new(BOOT_BUCKETS))
                .observe(seconds);
        }
    }
}

/// Adds one boot to the node's histograms, under an exclusive lock of the file's
/// directory (boots of several shims end at once).
pub fn record_boot(state_dir: &Path, boot: &BootSeconds) -> Result<(), MetricsError> {
    let path = state_dir.join(BOOT_PHASES_FILE);
    let dir = path.parent().unwrap_or(state_dir);
    std::fs::create_dir_all(dir).map_err(|source| MetricsError::Io {
        what: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| MetricsError::Io {
            what: "open",
            path: lock_path.clone(),
            source,
        })?;
    // Blocks until no other boot holds it; released when `_held` is dropped.
    let _held =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            MetricsError::Io {
                what: "lock",
                path: lock_path,
                source: e.into(),
            }
        })?;
    // A file another hull wrote that this one cannot read starts over rather than
    // stopping every boot from being counted.
    let mut phases = match BootPhases::read(state_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "starting the node's boot histograms over");
            BootPhases::default()
        }
    };
    phases.observe(boot);
    write_json(&path, &phases)
}

/// The latency of every agent RPC a client made, per RPC; shared by the clones of one
/// [`crate::agent_client::AgentClient`].
#[derive(Debug, Clone, Default)]
pub struct RpcLatency {
    inner: Arc<Mutex<RpcLatencyState>>,
    /// Wakes the [`SandboxMetricsWriter`] when an RPC ended.
    ended: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct RpcLatencyState {
    by_rpc: BTreeMap<&'static str, Histogram>,
    /// An RPC ended since [`RpcLatency::take_if_changed`] last looked.
    changed: bool,
}

impl RpcLatency {
    fn state(&self) -> std::sync::MutexGuard<'_, RpcLatencyState> {
        // Histograms stay consistent even if a holder panicked: every update is one
        // push of plain numbers.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn observe(&self, rpc: &'static str, took: Duration) {
        let mut state = self.state();
        state
            .by_rpc
            .entry(rpc)
            .or_insert_with(|| Histogram::new(RPC_BUCKETS))
            .observe(took.as_secs_f64());
        state.changed = true;
        drop(state);
        self.ended.notify_one();
    }

    /// A copy of the histograms if an RPC ended since the last call.
    pub fn take_if_changed(&self) -> Option<BTreeMap<String, Histogram>> {
        let mut state = self.state();
        if !std::mem::take(&mut state.changed) {
            return None;
        }
        Some(
            state
                .by_rpc
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }
}

/// Keeps `<dir>/metrics.json` current while it lives: the boot now, the RPC latencies
/// [`WRITE_INTERVAL`] after an RPC ended (RPCs that end meanwhile share the write).
/// Stops when dropped.
pub struct SandboxMetricsWriter {
    task: tokio::task::JoinHandle<()>,
}

impl SandboxMetricsWriter {
    /// Starts on the current tokio runtime.
    pub fn start(dir: &Path, boot: BootSeconds, latency: RpcLatency) -> SandboxMetricsWriter {
        let path = dir.join(SANDBOX_FILE);
        let mut metrics = SandboxMetrics {
            boot,
            rpc: BTreeMap::new(),
        };
        let task = tokio::spawn(async move {
            loop {
                if let Some(rpc) = latency.take_if_changed() {
                    metrics.rpc = rpc;
                }
                // The state dir goes away with the sandbox: a write that finds no dir
                // is the end, not an error.
                if let Err(e) = write_json(&path, &metrics) {
                    tracing::debug!(error = %e, "sandbox metrics not written");
                    if !path.parent().is_some_and(Path::exists) {
                        return;
                    }
                }
                latency.ended.notified().await;
                tokio::time::sleep(WRITE_INTERVAL).await;
            }
        });
        SandboxMetricsWriter { task }
    }
}

impl Drop for SandboxMetricsWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, MetricsError> {
    let text = std::fs::read(path).map_err(|source| MetricsError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| MetricsError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as JSON over `path`, atomically, readable by root only.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), MetricsError> {
    let io_error = |what: &'static str| {
        move |source| MetricsError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let text = serde_json::to_vec(value).map_err(|e| io_error("serialize")(e.into()))?;
    crate::atomic_write::write_atomically(path, &text, 0o600).map_err(io_error("write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(connected: f64) -> BootSeconds {
        BootSeconds {
            backend: "qemu".into(),
            processes: 0.01,
            kernel: None,
            init: Some(connected / 2.0),
            agent_ready: connected - 0.1,
            connected,
        }
    }

    #[test]
    fn boots_add_up_in_the_nodes_histograms_and_a_bad_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        record_boot(dir.path(), &boot(1.5)).unwrap();
        record_boot(dir.path(), &boot(3.0)).unwrap();
        let phases = BootPhases::read(dir.path()).unwrap();
        let connected = &phases.phases["connected"];
        assert_eq!(connected.count, 2);
        assert!((connected.sum - 4.5).abs() < 1e-9);
        // A phase the console did not show is not counted.
        assert!(!phases.phases.contains_key("kernel"));
        assert_eq!(phases.phases["init"].count, 2);

        std::fs::write(dir.path().join(BOOT_PHASES_FILE), b"{not json").unwrap();
        assert!(matches!(
            BootPhases::read(dir.path()),
            Err(MetricsError::Parse { .. })
        ));
        record_boot(dir.path(), &boot(2.0)).unwrap();
        assert_eq!(
            BootPhases::read(dir.path()).unwrap().phases["connected"].count,
            1
        );
    }

    #[test]
    fn no_file_is_no_boots() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BootPhases::read(dir.path()).unwrap(), BootPhases::default());
    }

    #[test]
    fn rpc_latency_is_taken_only_when_it_changed() {
        let latency = RpcLatency::default();
        assert!(latency.take_if_changed().is_none());
        latency.observe("check", Duration::from_millis(3));
        latency.clone().observe("check", Duration::from_millis(40));
        let taken = latency.take_if_changed().expect("changed");
        assert_eq!(taken["check"].count, 2);
        assert!(latency.take_if_changed().is_none());
    }

    #[tokio::test]
    async fn the_writer_keeps_the_file_current_and_stops_with_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let latency = RpcLatency::default();
        let writer = SandboxMetricsWriter::start(dir.path(), boot(1.0), latency.clone());
        let read_until = |want: u64| {
            let dir = dir.path().to_path_buf();
            async move {
                for _ in 0..50 {
                    if let Ok(m) = SandboxMetrics::read(&dir) {
                        if m.rpc.get("check").map_or(0, |h| h.count) == want {
                            return m;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("metrics.json never showed {want} checks");
            }
        };
        let first = read_until(0).await;
        assert_eq!(first.boot, boot(1.0));
        latency.observe("check", Duration::from_millis(2));
        read_until(1).await;
        drop(writer);
        let path = dir.path().to_path_buf();
        drop(dir);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!path.exists(), "the writer must not make the dir again");
    }
}
