//! A built VM and its run: start the vCPU threads, serve events until the VM ends, stop
//! the vCPUs, report how it ended.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use crate::config::VmConfig;
use crate::control::{Control, Request};
use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::exit::ExitReason;
use crate::vcpus::{VcpuThread, ACK_TIMEOUT};
use crate::vstate::kvm::KvmContext;
use crate::vstate::vcpu::{install_kick_handler, Vcpu};
use crate::vstate::vm::Vm;

/// A VM ready to run. Fields drop in order: vCPUs before the VM, the VM before memory.
pub struct Vmm {
    pub(crate) control: Arc<Control>,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) event_loop: EventLoop,
    /// Install the per-thread seccomp filters.
    pub(crate) seccomp: bool,
    pub(crate) _vm: Vm,
    pub(crate) _memory: GuestMemoryMmap,
    pub(crate) _kvm: KvmContext,
}

/// Controls a VM from another thread. Cheap to clone.
#[derive(Clone)]
pub struct VmmHandle {
    control: Arc<Control>,
}

impl VmmHandle {
    /// Ends the VM: [`Vmm::run`] returns [`ExitReason::Stopped`] (unless the guest ended
    /// it first).
    pub fn stop(&self) {
        self.control.finish(Ok(ExitReason::Stopped));
    }

    fn ask(&self, make: fn(mpsc::Sender<Result<()>>) -> Request) -> Result<()> {
        if self.control.is_ending() {
            return Err(Error::Vcpu {
                index: 0,
                reason: "the VM has ended".into(),
            });
        }
        let (tx, rx) = mpsc::channel();
        self.control.push(make(tx));
        rx.recv_timeout(ACK_TIMEOUT * 2 + Duration::from_secs(1))
            .map_err(|_| Error::Vcpu {
                index: 0,
                reason: "the VM did not answer (not running?)".into(),
            })?
    }

    /// Takes every vCPU out of the guest and parks it; returns once all are parked.
    pub fn pause(&self) -> Result<()> {
        self.ask(Request::Pause)
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) -> Result<()> {
        self.ask(Request::Resume)
    }
}

impl Vmm {
    /// Builds a VM from `config`: validates it, creates the VM, loads the kernel, sets up
    /// devices and vCPUs. Nothing runs yet.
    pub fn build(config: VmConfig) -> Result<Vmm> {
        crate::builder::build(config)
    }

    /// A handle to stop/pause/resume the VM while [`Vmm::run`] blocks.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle {
            control: self.control.clone(),
        }
    }

    /// Runs the VM until the guest ends it, a [`VmmHandle`] stops it, or it fails.
    ///
    /// With `seccomp` on (the default) the event loop runs on a thread of its own,
    /// "vmm-events", so that its filter never lands on the caller's thread.
    pub fn run(self) -> Result<ExitReason> {
        install_kick_handler()?;
        if !self.seccomp {
            return self.serve();
        }
        let events = std::thread::Builder::new()
            .name("vmm-events".into())
            .spawn(move || self.serve())
            .map_err(Error::host("event loop thread"))?;
        events.join().map_err(|_| Error::Vcpu {
            index: 0,
            reason: "the event loop thread panicked".into(),
        })?
    }

    fn serve(mut self) -> Result<ExitReason> {
        let mut threads = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            match VcpuThread::spawn(vcpu, self.control.clone(), self.seccomp) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.control.finish(Err(e));
                    break;
                }
            }
        }
        if self.seccomp {
            if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::EventLoop) {
                self.control.finish(Err(e));
            }
        }
        while !self.control.is_ending() {
            if let Err(e) = self.event_loop.run_once() {
                self.control.finish(Err(e));
                break;
            }
            while let Some(request) = self.control.pop() {
                serve(request, &threads, &mut self.event_loop);
            }
        }
        let mut stop_error = None;
        for t in threads {
            if let Err(e) = t.stop() {
                stop_error.get_or_insert(e);
            }
        }
        // The guest's last words (an unfinished line) before the VM's end is reported.
        self.event_loop.flush_console();
        // Answer requests that raced with the end.
        while let Some(request) = self.control.pop() {
            let (Request::Pause(tx) | Request::Resume(tx)) = request;
            let _ = tx.send(Err(Error::Vcpu {
                index: 0,
                reason: "the VM has ended".into(),
            }));
        }
        let outcome = self
            .control
            .take_outcome()
            .unwrap_or(Ok(ExitReason::Stopped));
        match (outcome, stop_error) {
            (Err(e), _) | (Ok(_), Some(e)) => Err(e),
            (Ok(reason), None) => Ok(reason),
        }
    }
}

fn serve(request: Request, threads: &[VcpuThread], event_loop: &mut EventLoop) {
    let (tx, result) = match request {
        Request::Pause(tx) => {
            let paused = threads.iter().try_for_each(VcpuThread::pause);
            // What the guest printed before the pause is out before the pause is
            // acknowledged (nothing appears while it is paused).
            event_loop.flush_console();
            (tx, paused)
        }
        Request::Resume(tx) => (tx, threads.iter().try_for_each(VcpuThread::resume)),
    };
    let _ = tx.send(result);
}
