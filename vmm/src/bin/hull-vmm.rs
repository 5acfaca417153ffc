//! `hull-vmm`: boot one microVM described by a JSON file or flags, and exit with a status
//! that says how it ended (table in vmm/README.md):
//!
//! | status | meaning |
//! |---|---|
//! | 0 | guest power-off or reset request (i8042 0xFE, triple fault, KVM system event) |
//! | 2v+1 | guest wrote byte v to the debug-exit port 0x501 (QEMU `isa-debug-exit` style) |
//! | 2 | bad configuration, usage, or kernel/initrd that cannot be loaded |
//! | 4 | KVM unavailable, or a KVM ioctl failed |
//! | 6 | the guest could not be run: emulation failure, failed VM entry, crash, unknown exit |
//! | 8 | VMM-internal failure (memory, threads, event loop) |
//! | 10 | stopped by the host (SIGTERM, SIGINT) |
//!
//! `--api-socket PATH` serves one-line requests while the VM runs (`pause`, `resume`,
//! `snapshot <dir>`), each answered `ok` or `error: <why>`. `--restore <dir>` (or
//! `--restore-fds <state fd>,<memory fd>`, files opened by the caller) starts the VM
//! from a snapshot instead of booting; `--config` then gives its host side.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use hull_vmm::{
    host_support, BlockConfig, FsConfig, KernelFormat, NetConfig, VmConfig, Vmm, VmmHandle,
    VsockConfig,
};

#[derive(Parser, Debug)]
#[command(name = "hull-vmm", about = "hull's KVM microVM monitor", version)]
struct Cli {
    /// VM description as JSON (the library's VmConfig); excludes the VM flags below.
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "cmdline", "vcpus", "mem_mib"])]
    config: Option<PathBuf>,
    /// Print what this host's /dev/kvm can do and exit (0: can run VMs, 4: cannot).
    #[arg(long)]
    check: bool,
    /// Kernel image (vmlinux ELF, bzImage, or a raw16 program).
    #[arg(long, required_unless_present_any = ["config", "check"])]
    kernel: Option<PathBuf>,
    /// auto, elf, bzimage or raw16.
    #[arg(long, value_parser = parse_format, default_value = "auto")]
    kernel_format: KernelFormat,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = "")]
    cmdline: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 128)]
    mem_mib: u32,
    /// Back guest memory with 2 MiB huge pages.
    #[arg(long)]
    hugepages: bool,
    /// Anonymous private guest memory instead of a shared memfd.
    #[arg(long)]
    private_memory: bool,
    /// Serial console output file (created or truncated).
    #[arg(long)]
    console: Option<PathBuf>,
    /// Serial console input (FIFO, terminal or socket).
    #[arg(long)]
    console_input: Option<PathBuf>,
    /// Add the debug-exit port 0x501.
    #[arg(long)]
    debug_exit: bool,
    #[arg(long)]
    no_i8042: bool,
    /// Run without the per-thread seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// virtio-vsock: `<guest_cid>,<uds_path>` (hybrid socket; guest connections to host
    /// port P go to `<uds_path>_P`).
    #[arg(long, value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,
    /// virtio-blk disk: `<path>[,ro][,id=<serial>]`; repeat for more disks.
    #[arg(long, value_parser = parse_block)]
    block: Vec<BlockConfig>,
    /// virtio-net on an inherited tap fd: `<fd>[,mac=aa:bb:cc:dd:ee:ff]`; repeatable.
    #[arg(long, value_parser = parse_net)]
    net: Vec<NetConfig>,
    /// virtio-fs through a running virtiofsd: `<vhost-user socket>,<tag>`.
    #[arg(long, value_parser = parse_fs)]
    fs: Option<FsConfig>,
    /// Start from the snapshot in this directory instead of booting the kernel.
    #[arg(long, requires = "config", conflicts_with = "restore_fds")]
    restore: Option<PathBuf>,
    /// Start from a snapshot whose `state.json` and `memory` the caller opened:
    /// `<state fd>,<memory fd>` (inherited).
    #[arg(long, requires = "config", value_parser = parse_fd_pair)]
    restore_fds: Option<(i32, i32)>,
    /// Serve `pause`, `resume` and `snapshot <dir>` requests on this Unix socket.
    #[arg(long)]
    api_socket: Option<PathBuf>,
}

fn parse_fd_pair(s: &str) -> Result<(i32, i32), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("expected <state fd>,<memory fd>, got {s:?}"))?;
    let fd = |t: &str| t.parse::<i32>().map_err(|_| format!("bad fd {t:?}"));
    Ok((fd(a)?, fd(b)?))
}

fn parse_fs(s: &str) -> Result<FsConfig, String> {
    let (socket, tag) = s
        .rsplit_once(',')
        .ok_or_else(|| format!("expected <socket>,<tag>, got {s:?}"))?;
    Ok(FsConfig {
        socket: socket.into(),
        tag: tag.to_string(),
    })
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut parts = s.split(',');
    let fd = parts.next().unwrap_or_default();
    let mut cfg = NetConfig {
        tap_fd: fd.parse().map_err(|_| format!("bad tap fd {fd:?}"))?,
        mac: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("mac", mac)) => cfg.mac = Some(mac.to_string()),
            _ => return Err(format!("unknown net option {opt:?} (mac=...)")),
        }
    }
    Ok(cfg)
}

fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let (cid, path) = s
        .split_once(',')
        .ok_or_else(|| format!("expected <guest_cid>,<uds_path>, got {s:?}"))?;
    Ok(VsockConfig {
        guest_cid: cid.parse().map_err(|_| format!("bad guest cid {cid:?}"))?,
        uds_path: path.into(),
    })
}

fn parse_block(s: &str) -> Result<BlockConfig, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("empty block path")?;
    let mut cfg = BlockConfig {
        path: path.into(),
        fd: None,
        read_only: false,
        id: String::new(),
        volatile: false,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => cfg.read_only = true,
            Some(("id", id)) => cfg.id = id.to_string(),
            _ => return Err(format!("unknown block option {opt:?} (ro, id=...)")),
        }
    }
    Ok(cfg)
}

fn parse_format(s: &str) -> Result<KernelFormat, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown kernel format {s:?} (auto, elf, bzimage, raw16)"))
}

impl Cli {
    fn vm_config(&self) -> Result<VmConfig, hull_vmm::Error> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|source| hull_vmm::Error::File {
                path: path.clone(),
                source,
            })?;
            let mut cfg = VmConfig::from_json(&text)?;
            // Output/input and device flags still apply on top of a file.
            if self.console.is_some() {
                cfg.console = self.console.clone();
            }
            if self.console_input.is_some() {
                cfg.console_input = self.console_input.clone();
            }
            cfg.devices.debug_exit |= self.debug_exit;
            if self.vsock.is_some() {
                cfg.vsock = self.vsock.clone();
            }
            cfg.block.extend(self.block.iter().cloned());
            cfg.net.extend(self.net.iter().cloned());
            if self.fs.is_some() {
                cfg.fs = self.fs.clone();
            }
            cfg.seccomp &= !self.no_seccomp;
            return Ok(cfg);
        }
        let mut cfg = VmConfig::new(self.kernel.clone().unwrap_or_default());
        cfg.kernel_format = self.kernel_format;
        cfg.initrd = self.initrd.clone();
        cfg.cmdline = self.cmdline.clone();
        cfg.vcpus = self.vcpus;
        cfg.mem_mib = self.mem_mib;
        cfg.hugepages = self.hugepages;
        cfg.shared_memory = !self.private_memory;
        cfg.console = self.console.clone();
        cfg.console_input = self.console_input.clone();
        cfg.devices.debug_exit = self.debug_exit;
        cfg.devices.i8042 = !self.no_i8042;
        cfg.vsock = self.vsock.clone();
        cfg.block = self.block.clone();
        cfg.net = self.net.clone();
        cfg.fs = self.fs.clone();
        cfg.seccomp = !self.no_seccomp;
        Ok(cfg)
    }
}

/// Blocks SIGTERM/SIGINT/SIGHUP in every thread and turns them into a clean stop.
fn stop_on_signals(handle: VmmHandle) {
    // SAFETY: sigset_t is plain data initialised by sigemptyset/sigaddset; the mask
    // change affects this thread and the threads it creates afterwards.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid signal set and `sig` a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                eprintln!("hull-vmm: signal {sig}, stopping the VM");
                handle.stop();
            }
        });
    if let Err(e) = spawned {
        eprintln!("hull-vmm: no signal thread ({e}); SIGTERM will kill the VMM outright");
    }
}

/// Serves the API socket on a thread of its own (no seccomp filter: it only talks to
/// the VM through `handle`). The socket is removed when the VM ends.
fn serve_api(path: &Path, handle: VmmHandle) -> Result<ApiSocket, hull_vmm::Error> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| hull_vmm::Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                serve_api_connection(stream, &handle);
            }
        })
        .map_err(|source| hull_vmm::Error::Host {
            what: "API thread",
            source,
        })?;
    Ok(ApiSocket(path.to_path_buf()))
}

/// Removes the API socket when dropped.
struct ApiSocket(PathBuf);

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn serve_api_connection(stream: UnixStream, handle: &VmmHandle) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else {
            return;
        };
        let line = line.trim();
        let result = match line.split_once(' ').unwrap_or((line, "")) {
            ("pause", "") => handle.pause(),
            ("resume", "") => handle.resume(),
            ("snapshot", dir) if !dir.is_empty() => handle.snapshot(Path::new(dir)),
            _ => {
                let _ = writeln!(
                    out,
                    "error: unknown request {line:?} (pause, resume, snapshot <dir>)"
                );
                continue;
            }
        };
        let reply = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {}", e.to_string().replace('\n', " ")),
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

fn build_or_restore(cli: &Cli, cfg: VmConfig) -> Result<Vmm, hull_vmm::Error> {
    if let Some(dir) = &cli.restore {
        return Vmm::restore(dir, cfg);
    }
    if let Some((state_fd, memory_fd)) = cli.restore_fds {
        let state = hull_vmm::inherited_file(state_fd, "snapshot state fd")?;
        let memory = hull_vmm::inherited_file(memory_fd, "snapshot memory fd")?;
        return Vmm::restore_files(Path::new("(inherited snapshot)"), state, memory, cfg);
    }
    Vmm::build(cfg)
}

fn status(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(8))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HULL_VMM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.check {
        let h = host_support();
        println!("{}", h.summary());
        return status(if h.can_run_vms() { 0 } else { 4 });
    }
    let result = cli.vm_config().and_then(|cfg| {
        let vmm = build_or_restore(&cli, cfg)?;
        stop_on_signals(vmm.handle());
        let _api = match &cli.api_socket {
            Some(path) => Some(serve_api(path, vmm.handle())?),
            None => None,
        };
        vmm.run()
    });
    match result {
        Ok(reason) => {
            eprintln!("hull-vmm: {reason}");
            status(reason.exit_code())
        }
        Err(e) => {
            eprintln!("hull-vmm: error: {e}");
            status(e.exit_code())
        }
    }
}
