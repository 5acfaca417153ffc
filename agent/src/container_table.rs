//! The sandbox's container table (and its debug processes), owned by `service::Service` (no globals), and the
//! queue of OOM events GetOomEvent hands out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use crate::container::{cgroup, Container, Process};

/// How often a container's memory.events is looked at for new OOM kills.
pub const OOM_POLL: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct ContainerTable {
    /// Set by DestroySandbox: OOM long polls end.
    closing: tokio::sync::watch::Sender<bool>,
    created: std::sync::atomic::AtomicBool,
    /// Debug processes allowed (CreateSandbox's `debug_exec`, fixed once created).
    debug_exec: std::sync::atomic::AtomicBool,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Debug processes of the guest itself (container_id "" in the API), by exec id.
    debug: Mutex<HashMap<String, Arc<Process>>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Default for ContainerTable {
    fn default() -> Self {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        ContainerTable {
            closing: tokio::sync::watch::channel(false).0,
            created: std::sync::atomic::AtomicBool::new(false),
            debug_exec: std::sync::atomic::AtomicBool::new(false),
            containers: Mutex::new(HashMap::new()),
            debug: Mutex::new(HashMap::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        }
    }
}

impl ContainerTable {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the sandbox set up (CreateSandbox); false if it already was.
    pub fn mark_created(&self) -> bool {
        !self.created.swap(true, Ordering::SeqCst)
    }

    /// Whether CreateSandbox ran (and did not fail).
    pub fn is_created(&self) -> bool {
        self.created.load(Ordering::SeqCst)
    }

    /// Lets a failed CreateSandbox be retried.
    pub fn unmark_created(&self) {
        self.created.store(false, Ordering::SeqCst);
        self.debug_exec.store(false, Ordering::SeqCst);
    }

    /// Sets the debug policy; only CreateSandbox calls it, once (see `mark_created`).
    pub fn set_debug_exec(&self, allowed: bool) {
        self.debug_exec.store(allowed, Ordering::SeqCst);
    }

    /// Whether debug processes are allowed in this sandbox.
    pub fn debug_exec_allowed(&self) -> bool {
        self.debug_exec.load(Ordering::SeqCst)
    }

    fn debug_table(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.debug.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The debug process `exec_id`.
    pub fn debug_process(&self, exec_id: &str) -> Option<Arc<Process>> {
        self.debug_table().get(exec_id).cloned()
    }

    pub fn has_debug_process(&self, exec_id: &str) -> bool {
        self.debug_table().contains_key(exec_id)
    }

    /// Adds a debug process, forgetting the ones that exited and were fully read.
    pub fn add_debug_process(&self, process: Arc<Process>) {
        let mut table = self.debug_table();
        table.retain(|_, p| !p.is_finished());
        table.insert(process.exec_id.clone(), process);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Container>> {
        self.table().get(id).cloned()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.table().contains_key(id)
    }

    /// Adds a container and starts watching its cgroup for OOM kills.
    pub fn insert(&self, container: Arc<Container>) {
        let weak = Arc::downgrade(&container);
        self.table().insert(container.id.clone(), container);
        let tx = self.oom_tx.clone();
        tokio::spawn(async move {
            loop {
                let Some(c) = weak.upgrade() else { return };
                if !check_oom(&c, &tx) {
                    return;
                }
                drop(c);
                tokio::time::sleep(OOM_POLL).await;
            }
        });
    }

    /// Queues an OOM event if the container's `oom_kill` count went up since the last
    /// look (the poller's, or this one). RemoveContainer calls it before the cgroup goes,
    /// so a kill just before removal is not lost between two polls.
    pub fn check_oom(&self, c: &Container) {
        check_oom(c, &self.oom_tx);
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Container>> {
        self.table().remove(id)
    }

    pub fn all(&self) -> Vec<Arc<Container>> {
        self.table().values().cloned().collect()
    }

    /// The next OOM event (container id); waits for one. None once the sandbox is being
    /// destroyed ([`ContainerTable::close`]).
    pub async fn next_oom(&self) -> Option<String> {
        let mut closing = self.closing.subscribe();
        if *closing.borrow() {
            return None;
        }
        tokio::select! {
            id = async { self.oom_rx.lock().await.recv().await } => id,
            _ = closing.wait_for(|c| *c) => None,
        }
    }

    /// The sandbox is going away: pending and later OOM long polls return None.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// See [`ContainerTable::check_oom`]; false once nobody listens any more.
fn check_oom(c: &Container, tx: &mpsc::UnboundedSender<String>) -> bool {
    let now = cgroup::oom_kills(&c.cgroup);
    let before = c.oom_kills_seen.swap(now, Ordering::SeqCst);
    if now > before {
        info!(container = %c.id, oom_kills = now, "OOM kill in container");
        return tx.send(c.id.clone()).is_ok();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::process::HostEnds;
    use crate::container::Process;

    #[tokio::test(flavor = "current_thread")]
    async fn oom_kill_count_going_up_queues_one_event() {
        let dir = std::env::temp_dir().join(format!("hull-oom-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let events = |n: u64| {
            std::fs::write(
                dir.join("memory.events"),
                format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {n}\n"),
            )
            .unwrap()
        };
        events(0);
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let init = Arc::new(Process::new(
            String::new(),
            1,
            HostEnds::default(),
            rx,
            dir.clone(),
        ));
        let mut c = Container::new("c1".into(), init, Vec::new());
        c.cgroup = dir.clone();
        let sandbox = ContainerTable::default();
        sandbox.check_oom(&c);
        events(2);
        sandbox.check_oom(&c);
        sandbox.check_oom(&c);
        let got = tokio::time::timeout(Duration::from_secs(1), sandbox.next_oom())
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("c1"));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), sandbox.next_oom())
                .await
                .is_err()
        );
        sandbox.close();
        assert_eq!(sandbox.next_oom().await, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
