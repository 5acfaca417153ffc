//! Containers in the guest: what the agent keeps per container and per process, the
//! spec checks (`spec`), the steps (done by libcontainer, `runner`), stdio (`stdio`,
//! `console`), the cgroup files (`cgroup`) and the pod's network sysctls (`sysctl`).

pub mod cgroup;
pub mod console;
pub mod exec_seccomp;
pub mod process;
pub mod runner;
pub mod seccomp_bpf;
pub mod spec;
pub mod stdio;
pub mod sysctl;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use process::{Exit, Process};

/// One container of the sandbox.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// The init process (exec_id "").
    pub init: Arc<Process>,
    /// Its cgroup directory in the guest.
    pub cgroup: PathBuf,
    /// Guest mounts made for this container (its `storages`), unmounted on removal.
    pub mounts: Vec<crate::storage::MountPlan>,
    /// The cgroup's `oom_kill` count when last looked at (see `ContainerTable::check_oom`).
    pub oom_kills_seen: AtomicU64,
    started: AtomicBool,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    pub fn new(
        id: String,
        init: Arc<Process>,
        mounts: Vec<crate::storage::MountPlan>,
    ) -> Container {
        let cgroup = cgroup::dir_of(&id);
        Container {
            id,
            init,
            cgroup,
            mounts,
            oom_kills_seen: AtomicU64::new(0),
            started: AtomicBool::new(false),
            execs: Mutex::new(HashMap::new()),
        }
    }

    /// Marks the container started; false if it already was.
    pub fn mark_started(&self) -> bool {
        !self.started.swap(true, Ordering::SeqCst)
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process `exec_id` ("" is the init process).
    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() {
            return Some(self.init.clone());
        }
        self.execs().get(exec_id).cloned()
    }

    pub fn has_exec(&self, exec_id: &str) -> bool {
        self.execs().contains_key(exec_id)
    }

    pub fn add_exec(&self, exec_id: String, process: Arc<Process>) {
        self.execs().insert(exec_id, process);
    }

    /// Every exec process (for ListProcesses).
    pub fn exec_processes(&self) -> Vec<Arc<Process>> {
        self.execs().values().cloned().collect()
    }
}
