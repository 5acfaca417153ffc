//! A built VM and its run: start the vCPU threads, serve events until the VM ends, stop
//! the vCPUs, report how it ended.

use std::fs::File;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use crate::config::VmConfig;
use crate::control::{Control, Request};
use crate::devices::legacy::SerialDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::exit::ExitReason;
use crate::snapshot::{write_memory, PendingSnapshot, SnapshotState, FORMAT_NAME, FORMAT_VERSION};
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
    /// What a snapshot reads besides the vCPUs.
    pub(crate) devices: SnapshotDevices,
    /// The description the VM was built from (recorded in a snapshot).
    pub(crate) config: VmConfig,
    pub(crate) vm: Vm,
    pub(crate) memory: GuestMemoryMmap,
    pub(crate) _kvm: KvmContext,
}

/// The devices whose state a snapshot records (the bus owns them too).
pub(crate) struct SnapshotDevices {
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
    /// One per virtio-mmio slot, in slot order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long copying guest memory into a snapshot may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Controls a VM from another thread. Cheap to clone.
#[derive(Clone)]
pub struct VmmHandle {
    control: Arc<Control>,
    memory_bytes: u64,
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

    /// Pauses the VM and writes a snapshot of it into the new directory `dir` (see
    /// `snapshot.rs` for the format). The VM stays paused: resume it or stop it. On
    /// failure nothing is left at `dir` or beside it.
    pub fn snapshot(&self, dir: &Path) -> Result<()> {
        self.pause()?;
        let pending = PendingSnapshot::create(dir, self.memory_bytes)?;
        let memory = pending
            .memory
            .try_clone()
            .map_err(Error::host("snapshot memory file"))?;
        let (reply, answer) = mpsc::channel();
        self.control.push(Request::Snapshot {
            dir: dir.to_path_buf(),
            memory,
            reply,
        });
        let state = answer
            .recv_timeout(SNAPSHOT_TIMEOUT)
            .map_err(|_| Error::Snapshot {
                path: dir.to_path_buf(),
                reason: format!("the VM did not write it within {SNAPSHOT_TIMEOUT:?}"),
            })??;
        pending.commit(&state)
    }
}

impl Vmm {
    /// Builds a VM from `config`: validates it, creates the VM, loads the kernel, sets up
    /// devices and vCPUs. Nothing runs yet.
    pub fn build(config: VmConfig) -> Result<Vmm> {
        crate::builder::build(config)
    }

    /// A VM in the state of the snapshot in `dir`. `config` gives this VM's host side
    /// (console, vsock socket, disks, taps, virtiofsd socket, seccomp); its vCPUs,
    /// memory and devices must be those of the snapshot, and its kernel, initrd and
    /// command line are not used (the snapshot's memory holds them).
    pub fn restore(dir: &Path, config: VmConfig) -> Result<Vmm> {
        crate::builder::restore(crate::snapshot::load(dir)?, config)
    }

    /// As [`Vmm::restore`], from the snapshot's two files opened by the caller
    /// (`state.json` and `memory`; `dir` names the snapshot in messages).
    pub fn restore_files(dir: &Path, state: File, memory: File, config: VmConfig) -> Result<Vmm> {
        crate::builder::restore(crate::snapshot::load_files(dir, state, memory)?, config)
    }

    /// A handle to stop, pause, resume or snapshot the VM while [`Vmm::run`] blocks.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle {
            control: self.control.clone(),
            memory_bytes: self.config.mem_bytes(),
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
                self.serve_request(request, &threads);
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
            request.refuse(|| Error::Vcpu {
                index: 0,
                reason: "the VM has ended".into(),
            });
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

impl Vmm {
    fn serve_request(&mut self, request: Request, threads: &[VcpuThread]) {
        match request {
            Request::Pause(tx) => {
                let paused = threads.iter().try_for_each(VcpuThread::pause);
                // What the guest printed before the pause is out before the pause is
                // acknowledged (nothing appears while it is paused).
                self.event_loop.flush_console();
                let _ = tx.send(paused);
            }
            Request::Resume(tx) => {
                let _ = tx.send(threads.iter().try_for_each(VcpuThread::resume));
            }
            Request::Snapshot { dir, memory, reply } => {
                let _ = reply.send(self.take_snapshot(&dir, threads, &memory));
            }
        }
    }

    /// Reads every state and copies guest memory, on the event loop thread: no device
    /// works while it runs, so the queues' positions and memory agree.
    fn take_snapshot(
        &self,
        dir: &Path,
        threads: &[VcpuThread],
        memory: &File,
    ) -> Result<SnapshotState> {
        let failed = |reason: String| Error::Snapshot {
            path: dir.to_path_buf(),
            reason,
        };
        let vcpus = threads
            .iter()
            .map(VcpuThread::save)
            .collect::<Result<Vec<_>>>()?;
        let vm = self.vm.save_state()?;
        let serial = self.devices.serial.as_ref().map(|s| lock(s).save_state());
        let mut virtio = Vec::with_capacity(self.devices.transports.len());
        for (slot, transport) in self.devices.transports.iter().enumerate() {
            let state = lock(transport)
                .save_state()
                .map_err(|reason| failed(format!("virtio slot {slot}: {reason}")))?;
            virtio.push(state);
        }
        let memory_bytes = write_memory(&self.memory, memory)
            .map_err(|e| failed(format!("writing guest memory: {e}")))?;
        tracing::debug!(vcpus = vcpus.len(), memory_bytes, "snapshot taken");
        Ok(SnapshotState {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            config: self.config.clone(),
            memory_bytes,
            vm,
            vcpus,
            serial,
            virtio,
        })
    }
}
