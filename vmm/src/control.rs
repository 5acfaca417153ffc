//! The VM's mailbox: how devices and vCPU threads report that the VM must end, and how
//! [`crate::VmmHandle`] asks for stop/pause/resume. Every post wakes the event loop.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::exit::ExitReason;
use crate::snapshot::SnapshotState;

/// A request from a [`crate::VmmHandle`], answered on its sender.
pub enum Request {
    Pause(Sender<Result<()>>),
    Resume(Sender<Result<()>>),
    /// Read every vCPU's, the VM's and each device's state, and copy guest memory into
    /// `memory`. Only while paused.
    Snapshot {
        /// The snapshot directory being written (for messages).
        dir: PathBuf,
        memory: File,
        reply: Sender<Result<SnapshotState>>,
    },
}

impl Request {
    /// Answers the request with an error (the VM ended before serving it).
    pub fn refuse(self, error: impl Fn() -> Error) {
        match self {
            Request::Pause(tx) | Request::Resume(tx) => {
                let _ = tx.send(Err(error()));
            }
            Request::Snapshot { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
        }
    }
}

/// Shared between the event loop, vCPU threads, devices and handles.
pub struct Control {
    wake: EventFd,
    outcome: Mutex<Option<Result<ExitReason>>>,
    ending: AtomicBool,
    requests: Mutex<VecDeque<Request>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Control {
    pub fn new() -> Result<Self> {
        Ok(Control {
            wake: EventFd::new(libc::EFD_NONBLOCK).map_err(Error::host("eventfd"))?,
            outcome: Mutex::new(None),
            ending: AtomicBool::new(false),
            requests: Mutex::new(VecDeque::new()),
        })
    }

    /// The eventfd the event loop watches.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    fn wake(&self) {
        // An eventfd write only fails when the counter would overflow, and then the
        // loop is awake anyway.
        let _ = self.wake.write(1);
    }

    /// Records how the VM ends; the first outcome wins.
    pub fn finish(&self, outcome: Result<ExitReason>) {
        {
            let mut slot = lock(&self.outcome);
            if slot.is_none() {
                *slot = Some(outcome);
            }
        }
        self.ending.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// True once an outcome is recorded: vCPUs stop running the guest.
    pub fn is_ending(&self) -> bool {
        self.ending.load(Ordering::SeqCst)
    }

    /// The recorded outcome, if any.
    pub fn take_outcome(&self) -> Option<Result<ExitReason>> {
        lock(&self.outcome).take()
    }

    /// Queues a handle request.
    pub fn push(&self, request: Request) {
        lock(&self.requests).push_back(request);
        self.wake();
    }

    /// Next queued request.
    pub fn pop(&self) -> Option<Request> {
        lock(&self.requests).pop_front()
    }

    /// Drains the wake-up counter.
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }
}
