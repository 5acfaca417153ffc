//! How the agent ends: as the guest's init it powers the VM off (there is no one else to
//! do it); as a plain process (development, tests) it just exits.
//!
//! "Power off" is `reboot(RB_AUTOBOOT)`: with `acpi=off` a real power-off cannot stop
//! QEMU, but with `reboot=t` on the kernel command line and QEMU's `-no-reboot` a reboot
//! ends QEMU with rc 0 (see PLATFORM.md).

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;
use tracing::{error, info, info_span, warn, Instrument};

use crate::{console, procfs};

/// Whether this process is the guest's init (set once, early in `main`). Read by the
/// panic hook, which has no other way to know.
static GUEST_INIT: AtomicBool = AtomicBool::new(false);

/// How the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of the guest: mounts, reaps orphans, powers the VM off.
    GuestInit,
    /// An ordinary process (host-side tests, development): none of the above.
    Process,
}

impl Mode {
    /// Records the mode for the panic hook.
    pub fn set_global(self) {
        GUEST_INIT.store(self == Mode::GuestInit, Ordering::SeqCst);
    }

    fn global() -> Mode {
        if GUEST_INIT.load(Ordering::SeqCst) {
            Mode::GuestInit
        } else {
            Mode::Process
        }
    }
}

/// Longest wait between SIGTERM and SIGKILL on power-off, whatever the host asks.
pub const MAX_TERM_GRACE: Duration = Duration::from_secs(60);

/// Installs the panic hook: as guest init, the panic message goes to /dev/console, file
/// systems are synced and the VM is rebooted (= stopped) instead of hanging with a dead
/// PID 1. As a process, the default hook runs as usual.
pub fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if Mode::global() == Mode::GuestInit {
            console::emergency_line(&format!("PANIC: {info}"), true);
            power_off_now();
        }
        default_hook(info);
    }));
}

/// A fatal error: say so on the console and, as guest init, stop the VM.
/// As a process it returns, and the caller exits with a failure code.
pub fn fatal(err: &anyhow::Error) {
    let mode = Mode::global();
    console::emergency_line(&format!("FATAL: {err:#}"), mode == Mode::GuestInit);
    if mode == Mode::GuestInit {
        power_off_now();
    }
}

/// Syncs file systems and reboots the guest, which stops the VM. Never returns: if the
/// reboot fails (it cannot for root PID 1 in practice) PID 1 must still not exit, which
/// would panic the kernel, so it parks forever.
pub fn power_off_now() -> ! {
    nix::unistd::sync();
    reboot_now()
}

/// Reboots the guest (= stops the VM) without a sync: for callers that synced already.
/// Never returns (see [`power_off_now`]).
fn reboot_now() -> ! {
    let err = match reboot(RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    console::emergency_line(&format!("reboot failed: {err}; halting here"), true);
    loop {
        std::thread::park();
    }
}

/// Who may ask the agent to end, and how it ends.
#[derive(Clone, Debug)]
pub struct PowerControl {
    mode: Mode,
    stop: watch::Sender<bool>,
}

/// The main loop's end of a [`PowerControl`]: resolves when a process-mode agent was
/// asked to stop.
#[derive(Debug)]
pub struct StopRequest(watch::Receiver<bool>);

impl StopRequest {
    /// Waits for a stop request.
    pub async fn requested(&mut self) {
        // An error means every sender is gone: nobody can ask any more, so wait forever.
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<Infallible>().await;
        }
    }
}

impl PowerControl {
    pub fn new(mode: Mode) -> (PowerControl, StopRequest) {
        let (tx, rx) = watch::channel(false);
        (PowerControl { mode, stop: tx }, StopRequest(rx))
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Gets the guest ready to stop, as guest init: SIGTERM every process, SIGKILL what
    /// is left after `grace` (capped at [`MAX_TERM_GRACE`]), sync. Nothing as a process.
    pub async fn settle(&self, grace: Duration) {
        if self.mode != Mode::GuestInit {
            return;
        }
        terminate_all(grace.min(MAX_TERM_GRACE))
            .instrument(info_span!("terminate_all"))
            .await;
        // Off the runtime's thread (sync can take a while: on virtio-fs it is a syncfs of
        // the host's file system), so other requests are served meanwhile.
        if let Err(e) = tokio::task::spawn_blocking(nix::unistd::sync).await {
            warn!(error = %e, "sync failed to run; syncing here");
            nix::unistd::sync();
        }
    }

    /// Ends the agent, not before `not_before` (the reply that asked for it must leave
    /// first): as guest init, reboot (call [`PowerControl::settle`] first); it does not
    /// return. As a process: tells the main loop to stop (which shuts the server down
    /// and exits).
    pub async fn power_off(&self, not_before: tokio::time::Instant) {
        match self.mode {
            Mode::GuestInit => {
                tokio::time::sleep_until(not_before).await;
                info!("powering off");
                reboot_now();
            }
            Mode::Process => {
                tokio::time::sleep_until(not_before).await;
                info!("stopping the agent process");
                self.stop.send_replace(true);
            }
        }
    }
}

/// SIGTERM to every process but PID 1, then SIGKILL after `grace` if any is left.
/// Only for guest init: `kill(-1, ..)` anywhere else would hit the host's processes.
async fn terminate_all(grace: Duration) {
    if let Err(e) = kill(Pid::from_raw(-1), Signal::SIGTERM) {
        warn!(error = %e, "SIGTERM to all processes failed");
    }
    let deadline = Instant::now() + grace;
    loop {
        // Not `kill(-1, 0)`: kernel threads always answer it. The reaper task, on this
        // same runtime, reaps the zombies while we sleep.
        let left = match procfs::live_user_processes(Path::new("/proc"), std::process::id() as i32)
        {
            Ok(pids) => pids,
            Err(e) => {
                warn!(error = %e, "cannot list processes; killing without waiting");
                break;
            }
        };
        if left.is_empty() {
            info!("all processes exited");
            return;
        }
        if Instant::now() >= deadline {
            warn!(
                ?grace,
                ?left,
                "processes left after the grace period; killing them"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match kill(Pid::from_raw(-1), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => error!(error = %e, "SIGKILL to all processes failed"),
    }
}
