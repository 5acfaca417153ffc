//! The `hull-agent` binary: start-up and the main loop (the modules are in the library,
//! `lib.rs`).
//!
//! Start-up, in order (each step is a module):
//! 1. `config`: arguments; the mode: guest init (PID 1 on vsock) or a plain process.
//! 2. `power`: panic hook; as guest init a panic stops the VM instead of hanging it.
//! 3. `init`: /dev and /proc, the console (`hull-agent: started`), kernel command line
//!    options, then the other base mounts and cgroup controllers.
//! 4. `reaper`: SIGCHLD; reaps every child and orphan, hands out exit statuses.
//! 5. `policy`: the baked agent policy (/etc/hull/policy.toml).
//! 6. `server`: ttrpc on vsock port 1024 (or `--listen unix:///path`), handlers in
//!    `rpc`, logic in `service`.
//! 7. `port_forward`: on vsock port 1026, connections the host forwards to pod ports.
//! 8. `announce`: tells the host it may connect now.
//!
//! Outside a guest (`--listen unix://...` or not PID 1) steps 3 and the power-off are
//! skipped, and DestroySandbox ends the process: that is how host-side tests run it.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tracing::level_filters::LevelFilter;
use tracing::{info, info_span, warn, Instrument};

use hull_agent::config::{self, Args, ListenAddr};
use hull_agent::policy::{self, Policies};
use hull_agent::power::{self, Mode, PowerControl};
use hull_agent::reaper::Reaper;
use hull_agent::rpc::Rpc;
use hull_agent::service::Service;
use hull_agent::{announce, console, init, port_forward, server, switch_root};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() -> ExitCode {
    let is_pid1 = nix::unistd::getpid().as_raw() == 1;
    // Before anything else: leave the initramfs (pivot_root cannot work from it). Only
    // returns on failure; the agent then goes on, and containers will fail to start.
    if is_pid1 && switch_root::needed() && wants_guest_init() {
        let e = switch_root::switch_and_reexec();
        eprintln!("hull-agent: could not move the root onto a tmpfs: {e}");
    }
    // Until the arguments say otherwise, PID 1 is the guest's init: a panic or bad
    // arguments (the kernel passes words after `--` to init) must stop the VM, not
    // return from main (PID 1 exiting panics the kernel).
    let provisional = if is_pid1 {
        Mode::GuestInit
    } else {
        Mode::Process
    };
    provisional.set_global();
    power::install_panic_hook();

    let args = match config::parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            power::fatal(&anyhow::Error::new(e));
            return ExitCode::from(2);
        }
    };
    let mode = match args.listen_addr() {
        ListenAddr::Vsock { .. } if is_pid1 => Mode::GuestInit,
        _ => Mode::Process,
    };
    mode.set_global();
    if args.version {
        println!(
            "hull-agent {VERSION} (agent API {})",
            hull_proto::API_VERSION
        );
        return finish(mode, ExitCode::SUCCESS);
    }

    match run(args, mode) {
        Ok(()) => finish(mode, ExitCode::SUCCESS),
        Err(e) => {
            power::fatal(&e);
            ExitCode::FAILURE
        }
    }
}

/// Whether the arguments leave the agent in its default (vsock, guest init) mode: only
/// then does PID 1 switch its root.
fn wants_guest_init() -> bool {
    match config::parse_args(std::env::args().skip(1)) {
        Ok(args) => matches!(args.listen_addr(), ListenAddr::Vsock { .. }) && !args.version,
        Err(_) => false,
    }
}

/// The exit code, or, as guest init (which must never exit), the VM's power-off.
fn finish(mode: Mode, code: ExitCode) -> ExitCode {
    if mode == Mode::GuestInit {
        power::power_off_now();
    }
    code
}

fn run(args: Args, mode: Mode) -> anyhow::Result<()> {
    let mut level = args.log.unwrap_or(LevelFilter::INFO);
    if mode == Mode::GuestInit {
        init::mount_all(&init::HostOps, &init::early_mounts()).context("early mounts")?;
        console::setup_stdio().context("console")?;
        console::announce_line(&format!("started {VERSION}"));
        let cmdline = std::fs::read_to_string("/proc/cmdline").context("read /proc/cmdline")?;
        let opts = config::parse_cmdline(&cmdline);
        level = opts.log.unwrap_or(level);
        init_logging(level);
        for word in &opts.ignored {
            warn!(option = %word, "unknown or malformed hull.* kernel option ignored");
        }
        info!(debug_console = opts.debug_console, "guest init");
        init::bring_up(&init::HostOps).context("guest bring-up")?;
    } else {
        console::announce_line(&format!("started {VERSION}"));
        init_logging(level);
        // Orphans of our children come to us, as they would to PID 1.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(error = %e, "could not become a child subreaper");
        }
    }

    // current_thread: PID 1 stays one thread, so the next issue's in-process clone()
    // (youki's libcontainer) runs in a process that has no other threads to lose.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(serve(args, mode))
}

async fn serve(args: Args, mode: Mode) -> anyhow::Result<()> {
    let reaper = Reaper::start().context("reaper")?;
    // The guest image's policy; outside a guest the built-in default (a host's /etc/hull
    // is hull's runtime config, not a guest image). A broken baked policy stops the
    // agent: it must not run without the rules the image was built with.
    let policy = if mode == Mode::GuestInit {
        Policies::load(std::path::Path::new(policy::BAKED_PATH))
    } else {
        Policies::builtin()
    }
    .context("agent policy")?;
    info!(policy = %policy.name(), "agent policy loaded");
    let (power, mut stop) = PowerControl::new(mode);
    let service = Arc::new(Service::new(power, reaper, policy));
    let listening = server::start(&args.listen_addr(), Rpc::new(service)).await?;

    if matches!(args.listen_addr(), ListenAddr::Vsock { .. }) {
        tokio::spawn(port_forward::serve());
    }

    if let Some(target) = args.announce_target() {
        tokio::spawn(async move {
            announce::announce(target)
                .instrument(info_span!("announce"))
                .await;
        });
    }

    if mode == Mode::GuestInit {
        // Signals to PID 1 have no default action; the VM ends through DestroySandbox.
        stop.requested().await;
    } else {
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        tokio::select! {
            _ = stop.requested() => {}
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
        }
    }
    listening.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Logs go to the agent's stderr (the serial console in the guest), through a
/// close-on-exec duplicate of it: a process libcontainer forks from the agent keeps
/// logging there after it points fd 2 at the container's stderr, so nothing of the
/// agent's (libcontainer's warnings included) reaches a container's output, and the
/// duplicate is gone once the container's program runs.
fn init_logging(level: LevelFilter) {
    let writer = match log_destination() {
        Ok(file) => std::sync::Arc::new(file),
        Err(e) => {
            eprintln!("hull-agent: logging not set up: cannot duplicate stderr: {e}");
            return;
        }
    };
    let result = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .try_init();
    if let Err(e) = result {
        eprintln!("hull-agent: logging not set up: {e}");
    }
}

/// A close-on-exec duplicate of fd 2, above the stdio range.
fn log_destination() -> std::io::Result<std::fs::File> {
    use std::os::fd::OwnedFd;
    let fd: OwnedFd = nix::fcntl::fcntl(
        libc::STDERR_FILENO,
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3),
    )
    .map_err(std::io::Error::from)
    .map(|raw| {
        // SAFETY: F_DUPFD_CLOEXEC just returned `raw`, a new descriptor that
        // nothing else in this process owns.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
    })?;
    Ok(std::fs::File::from(fd))
}
