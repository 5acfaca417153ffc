//! vCPU threads and their small state machine: Running <-> Paused -> Exited.
//!
//! The controller (the event loop thread) changes a vCPU's `request`, wakes it if it
//! waits on the condvar, and kicks it out of `KVM_RUN` with a signal (re-sent every
//! [`KICK_INTERVAL`] until the thread acknowledges, so a lost race costs one interval,
//! never a hang). The thread checks `request` before every `KVM_RUN`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::Killable;

use crate::control::Control;
use crate::error::{Error, Result};
use crate::vstate::vcpu::{kick_signal, Vcpu, VcpuRun, VcpuState};

const KICK_INTERVAL: Duration = Duration::from_millis(10);
/// How long a vCPU may take to acknowledge a pause or stop.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

const REQ_RUN: u8 = 0;
const REQ_PAUSE: u8 = 1;
const REQ_STOP: u8 = 2;
/// Read the vCPU's state while paused (a snapshot), then stay paused.
const REQ_SAVE: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Paused,
    Exited,
}

struct Shared {
    request: AtomicU8,
    state: Mutex<State>,
    changed: Condvar,
    /// The answer to REQ_SAVE.
    saved: Mutex<Option<Result<VcpuState>>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, s: State) {
        *self.state() = s;
        self.changed.notify_all();
    }
}

/// A running vCPU thread.
pub struct VcpuThread {
    index: usize,
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

/// A caller may have blocked the kick signal; vCPU threads need it. (Should this fail,
/// kicks never land and pause/stop report an acknowledgement timeout.)
fn unblock_kick_signal() {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

fn vcpu_loop(mut vcpu: Vcpu, shared: &Shared, control: &Control) {
    unblock_kick_signal();
    let _kick = vcpu.bind_kick();
    loop {
        vcpu.clear_kick();
        match shared.request.load(Ordering::SeqCst) {
            REQ_STOP => break,
            REQ_PAUSE => {
                let mut state = shared.state();
                *state = State::Paused;
                shared.changed.notify_all();
                loop {
                    match shared.request.load(Ordering::SeqCst) {
                        REQ_PAUSE => {}
                        REQ_SAVE => {
                            let saved = vcpu.save_state();
                            *shared.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
                            shared.request.store(REQ_PAUSE, Ordering::SeqCst);
                            shared.changed.notify_all();
                        }
                        _ => break,
                    }
                    state = shared
                        .changed
                        .wait(state)
                        .unwrap_or_else(|p| p.into_inner());
                }
                *state = State::Running;
                shared.changed.notify_all();
                continue;
            }
            _ => {}
        }
        if control.is_ending() {
            break;
        }
        match vcpu.run_once() {
            Ok(VcpuRun::Handled) | Ok(VcpuRun::Interrupted) => {}
            Ok(VcpuRun::Exit(reason)) => {
                tracing::debug!(vcpu = vcpu.index(), %reason, "guest exit");
                control.finish(Ok(reason));
                break;
            }
            Err(e) => {
                control.finish(Err(e));
                break;
            }
        }
    }
}

impl VcpuThread {
    /// Starts `vcpu` on its own thread.
    /// With `seccomp`, the thread installs the vCPU filter before its first `KVM_RUN`.
    pub fn spawn(vcpu: Vcpu, control: Arc<Control>, seccomp: bool) -> Result<Self> {
        let index = vcpu.index();
        let shared = Arc::new(Shared {
            request: AtomicU8::new(REQ_RUN),
            state: Mutex::new(State::Running),
            changed: Condvar::new(),
            saved: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let filtered = if seccomp {
                    crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu)
                } else {
                    Ok(())
                };
                match filtered {
                    Ok(()) => vcpu_loop(vcpu, &thread_shared, &control),
                    Err(e) => control.finish(Err(e)),
                }
                thread_shared.set_state(State::Exited);
            })
            .map_err(Error::host("vCPU thread"))?;
        Ok(VcpuThread {
            index,
            shared,
            handle: Some(handle),
        })
    }

    fn kick(&self) {
        if let Some(handle) = &self.handle {
            // Fails only if the thread is gone, which the state check covers.
            let _ = handle.kill(kick_signal());
        }
    }

    /// Sets the request, then kicks until `done(state)` or the timeout.
    fn request_and_wait(&self, request: u8, done: impl Fn(State) -> bool) -> Result<()> {
        self.shared.request.store(request, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut state = self.shared.state();
        loop {
            if done(*state) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Vcpu {
                    index: self.index,
                    reason: format!("no acknowledgement within {ACK_TIMEOUT:?}"),
                });
            }
            drop(state);
            self.kick();
            state = self.shared.state();
            let wait = KICK_INTERVAL.min(deadline - now);
            state = self
                .shared
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Takes the vCPU out of the guest and parks it.
    pub fn pause(&self) -> Result<()> {
        self.request_and_wait(REQ_PAUSE, |s| s != State::Running)
    }

    /// Reads the state of a paused vCPU (on its own thread, which owns the vCPU fd).
    pub fn save(&self) -> Result<VcpuState> {
        let not_paused = || Error::Vcpu {
            index: self.index,
            reason: "not paused; a vCPU's state is read only while it is paused".into(),
        };
        let mut state = self.shared.state();
        if *state != State::Paused {
            return Err(not_paused());
        }
        self.shared.request.store(REQ_SAVE, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let deadline = Instant::now() + ACK_TIMEOUT;
        while self.shared.request.load(Ordering::SeqCst) == REQ_SAVE {
            let now = Instant::now();
            if now >= deadline || *state == State::Exited {
                return Err(Error::Vcpu {
                    index: self.index,
                    reason: format!("state not read within {ACK_TIMEOUT:?}"),
                });
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(state);
        self.shared
            .saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Err(not_paused()))
    }

    /// Lets a paused vCPU run again.
    pub fn resume(&self) -> Result<()> {
        self.request_and_wait(REQ_RUN, |s| s != State::Paused)
    }

    /// Stops the thread and joins it.
    pub fn stop(mut self) -> Result<()> {
        self.request_and_wait(REQ_STOP, |s| s == State::Exited)?;
        if let Some(handle) = self.handle.take() {
            handle.join().map_err(|_| Error::Vcpu {
                index: self.index,
                reason: "thread panicked".into(),
            })?;
        }
        Ok(())
    }
}
