//! The sandbox's container table, owned by `service::Service` (no globals), and the
//! queue of OOM events GetOomEvent hands out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use crate::container::{cgroup, Container};

/// How often a container's memory.events is looked at for new OOM kills.
pub const OOM_POLL: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Sandbox {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Default for Sandbox {
    fn default() -> Self {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Sandbox {
            containers: Mutex::new(HashMap::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        }
    }
}

impl Sandbox {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
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
            let mut seen = None;
            loop {
                let Some(c) = weak.upgrade() else { return };
                let now = cgroup::oom_kills(&c.cgroup);
                if seen.is_some_and(|s| now > s) {
                    info!(container = %c.id, oom_kills = now, "OOM kill in container");
                    if tx.send(c.id.clone()).is_err() {
                        return;
                    }
                }
                seen = Some(now);
                drop(c);
                tokio::time::sleep(OOM_POLL).await;
            }
        });
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Container>> {
        self.table().remove(id)
    }

    pub fn all(&self) -> Vec<Arc<Container>> {
        self.table().values().cloned().collect()
    }

    /// The next OOM event (container id); waits for one.
    pub async fn next_oom(&self) -> Option<String> {
        self.oom_rx.lock().await.recv().await
    }
}
