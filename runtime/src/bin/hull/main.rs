//! `hull`: the command-line front end. Each subcommand is a thin script over the
//! runtime library (`hull_runtime`); this file only parses arguments, prints, and makes
//! sure a Ctrl-C or SIGTERM tears everything down.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hull_runtime::agent_client::ExitInfo;
use hull_runtime::config::Config;
use hull_runtime::run::debug::DebugExecOptions;
use hull_runtime::run::exec::ExecOptions;
use hull_runtime::run::{RunError, RunOptions, Signals};
use hull_runtime::sandbox::{Sandbox, SandboxSpec};
use hull_runtime::{bench, check, gc, hypervisor, image, inspect, monitor};

mod pool;
mod template;

use pool::PoolCommand;
use template::TemplateCommand;

#[derive(Parser)]
#[command(name = "hull", version, about = "Containers in microVMs")]
struct Cli {
    /// Configuration file [default: $HULL_CONFIG, else /etc/hull/config.toml if present].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log level for hull's own logs (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "HULL_LOG", default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tell what this host can run and which backend hull will use.
    Check,
    /// Work with bare VMs (no container).
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// Run a command in a container in a fresh microVM; exits with its exit code.
    Run(Box<RunArgs>),
    /// Run one more command in the container of a running `hull run --name NAME`.
    Exec(Box<ExecArgs>),
    /// Debugging aids for running sandboxes.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
    /// Local OCI images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// List the sandbox VMs on this host: backend, PID, owner and whether it runs
    /// (`orphan`: it is gone), memory, containers.
    Ps,
    /// Remove orphaned sandboxes (their owner, a shim or `hull run`, is gone): VM
    /// processes, mounts, taps, cgroups, scratch disk and state dir. A sandbox whose
    /// owner runs is never touched. Idempotent.
    Gc {
        /// Only say which sandboxes would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Also name the sandboxes left alone.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Serve this node's sandboxes as Prometheus metrics at http://LISTEN/metrics: the
    /// sandboxes, their host memory, guest memory and containers (asked from each
    /// agent), boot phases and agent RPC latencies. Runs until SIGINT or SIGTERM.
    Monitor {
        /// Address and port to listen on (port 0: any free port; the address taken is
        /// printed first).
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: std::net::SocketAddr,
    },
    /// Print the guest console log (kernel and agent) of a sandbox (id or id prefix).
    Logs { sandbox: String },
    /// Register hull as the containerd runtime `io.containerd.hull.v2` (RuntimeClass
    /// handler `hull`) in containerd's config, and write hull's config file (the
    /// defaults, commented) unless it exists; idempotent. Restart containerd after.
    InstallContainerd {
        /// containerd's config file.
        #[arg(long, default_value = hull_runtime::install::DEFAULT_CONTAINERD_CONFIG)]
        containerd_config: PathBuf,
        /// hull's config file, named as the runtime's ConfigPath [default: --config, else
        /// /etc/hull/config.toml].
        #[arg(long)]
        hull_config: Option<PathBuf>,
    },
    /// The warm pool of booted VMs that containerd's new pods take (`[pool] size`).
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// VM templates (`[template]`, hull-vmm): snapshots of a VM booted to "agent
    /// ready" that sandboxes start from.
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Measure hull.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(clap::Args, Clone)]
struct VmArgs {
    /// Guest kernel (vmlinux or bzImage) [default: from the config].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs [default: from the config].
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// vCPUs.
    #[arg(long)]
    cpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory: Option<u32>,
    /// Keep the VM's state dir (console and helper logs) afterwards, for debugging.
    #[arg(long)]
    keep_state: bool,
    /// Attach the sandbox share (virtiofsd) as `hull run` does.
    #[arg(long)]
    share: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// OCI image layout dir, or the name of one in <cache_dir>/images (e.g. demo);
    /// `:TAG` picks a manifest by tag.
    #[arg(long, conflicts_with = "rootfs")]
    image: Option<String>,
    /// A root filesystem directory to copy instead of an image.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    #[command(flatten)]
    process: ProcessFlags,
    /// Memory limit: bytes, or with a unit k, m, g (512M, 1G). The VM gets this plus
    /// 128 MiB (at least the configured guest memory).
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// CPU limit (CFS quota), e.g. 0.5 or 2. The VM gets at least this many vCPUs.
    #[arg(long)]
    cpus: Option<String>,
    /// Maximum number of processes in the container.
    #[arg(long)]
    pids_limit: Option<i64>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Bind a host directory into the container: HOST_DIR:CONTAINER_DIR[:ro]; repeatable.
    #[arg(
        short = 'v',
        long = "volume",
        value_name = "HOST_DIR:CONTAINER_DIR[:ro]"
    )]
    volumes: Vec<String>,
    /// Container hostname [default: the first 12 characters of the sandbox id].
    #[arg(long)]
    hostname: Option<String>,
    /// Keep the VM's state dir afterwards, for debugging.
    #[arg(long)]
    keep_state: bool,
    /// Name the sandbox (1-64 of [A-Za-z0-9_.-]), so `hull exec NAME` can reach it.
    #[arg(long)]
    name: Option<String>,
    /// The command and its arguments [default: the image's Entrypoint and Cmd].
    #[arg(last = true)]
    command: Vec<String>,
}

/// How the process of `hull run` and `hull exec` runs; unset flags keep the image's
/// (run) or the container's (exec) settings.
#[derive(clap::Args)]
struct ProcessFlags {
    /// Allocate a terminal (raw mode on hull's terminal while it runs).
    #[arg(short = 't', long)]
    tty: bool,
    /// Keep stdin open and send it to the process.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Set an environment variable (KEY=VALUE); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// UID[:GID] (or a name from the image's /etc/passwd).
    #[arg(short = 'u', long)]
    user: Option<String>,
}

#[derive(clap::Args)]
struct ExecArgs {
    #[command(flatten)]
    process: ProcessFlags,
    /// The sandbox's name (`hull run --name`).
    name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Run a command in the guest itself, outside any container (root namespaces, as
    /// root); needs `[debug] exec = true` in the config the sandbox booted with. The
    /// guest has no shell of its own: use a guest path such as
    /// /run/hull/share/containers/<id>/rootfs/bin/busybox.
    Exec(Box<DebugExecArgs>),
    /// Fault injection: make the sandbox's agent abort (the guest kernel panics and the
    /// VM stops); needs `[debug] exec = true` like `debug exec`. Used by scripts/soak.
    CrashAgent {
        /// The sandbox: a `hull run --name`, or a sandbox id or id prefix from `hull ps`.
        sandbox: String,
    },
}

#[derive(clap::Args)]
struct DebugExecArgs {
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Keep stdin open and send it to the process.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// The sandbox: a `hull run --name`, or a sandbox id or id prefix from `hull ps`.
    sandbox: String,
    /// The command (a guest path, or a name in the guest's PATH) and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Print where a named image lives (<cache_dir>/images/NAME).
    Path { name: String },
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot a VM, ask its agent for its health and version, print them, destroy the VM.
    Ping {
        #[command(flatten)]
        vm: VmArgs,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Boot phases of a hull VM next to the same kernel booting a trivial /init.
    Boot {
        #[command(flatten)]
        vm: VmArgs,
        /// Runs of each.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The floor initramfs [default: floor-initramfs.cpio in the cache dir].
        #[arg(long)]
        floor_initrd: Option<PathBuf>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hull: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `hull run` forwards signals to its container and tears down itself.
    let own_signals = matches!(
        cli.command,
        Command::Run(_)
            | Command::Exec(_)
            | Command::Debug {
                command: DebugCommand::Exec(_)
            }
            | Command::Monitor { .. }
    );
    let code = rt.block_on(async {
        tokio::select! {
            r = run(cli) => match r {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("hull: {e:#}");
                    ExitCode::FAILURE
                }
            },
            sig = interrupted(), if !own_signals => {
                // Dropping `run` dropped the sandbox: its processes were killed and its
                // state dir removed.
                eprintln!("hull: interrupted by {sig}; the VM was torn down");
                ExitCode::from(if sig == "SIGINT" { 130 } else { 143 })
            }
        }
    });
    // A stdin reader blocked in the runtime's thread pool must not keep hull alive.
    rt.shutdown_background();
    code
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    Ok(Config::load(cli.config.as_deref())?)
}

fn sandbox_spec(config: &Config, vm: &VmArgs) -> SandboxSpec {
    let mut spec = SandboxSpec::from_config(config);
    if let Some(k) = &vm.kernel {
        spec.kernel = k.clone();
    }
    if let Some(i) = &vm.initrd {
        spec.initrd = i.clone();
    }
    if let Some(c) = vm.cpus {
        spec.vcpus = c;
    }
    if let Some(m) = vm.memory {
        spec.memory_mib = m;
    }
    spec.keep_state = vm.keep_state;
    spec.share = vm.share;
    spec
}

async fn run(cli: Cli) -> Result<ExitCode> {
    // Writes hull's config file: it must not need one.
    if let Command::InstallContainerd {
        containerd_config,
        hull_config,
    } = &cli.command
    {
        return install_containerd(
            containerd_config,
            hull_config.as_ref().or(cli.config.as_ref()),
        );
    }
    let config = load_config(&cli)?;
    match &cli.command {
        Command::Check => {
            let report = check::run(&config);
            print!("{report}");
            Ok(if report.can_run() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Vm {
            command: VmCommand::Ping { vm },
        } => {
            let spec = sandbox_spec(&config, vm);
            let sandbox = Sandbox::boot(&config, &spec, hypervisor::select(&config)?)
                .await
                .context("booting the VM")?;
            let answer = async {
                sandbox.agent().context("no agent")?.check().await?;
                Ok::<_, anyhow::Error>(sandbox.agent_version().await?)
            }
            .await;
            let report = sandbox.boot_report().summary();
            let state = sandbox.state_dir().to_path_buf();
            let destroyed = sandbox.destroy().await;
            let v = answer.context("asking the agent")?;
            destroyed.context("destroying the VM")?;
            println!(
                "agent: hull-agent {} (API {}) healthy",
                v.agent_version, v.api_version
            );
            println!("guest kernel: {}", v.kernel_release);
            println!("guest uptime at answer: {:.3} s", v.uptime.as_secs_f64());
            println!("{report}");
            if vm.keep_state {
                println!("state kept in {}", state.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => Ok(run_container(&config, args).await),
        Command::Exec(args) => Ok(exec_process(&config, args).await),
        Command::Debug {
            command: DebugCommand::Exec(args),
        } => Ok(debug_exec(&config, args).await),
        Command::Debug {
            command: DebugCommand::CrashAgent { sandbox },
        } => {
            hull_runtime::run::debug::crash_agent(&config, sandbox).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image {
            command: ImageCommand::Path { name },
        } => {
            if !image::is_bare_name(name) {
                anyhow::bail!("{name:?} is not an image name (no '/')");
            }
            println!(
                "{}",
                image::images_dir(&config.runtime.cache_dir)
                    .join(name)
                    .display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps => {
            print!(
                "{}",
                inspect::table(&inspect::list(&config.runtime.state_dir))
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc { dry_run, verbose } => gc(&config, *dry_run, *verbose),
        Command::Pool { command } => pool::pool(&config, cli.config.as_deref(), command),
        Command::Template { command } => template::template(&config, command).await,
        Command::Monitor { listen } => {
            let listener = monitor::bind(*listen).await?;
            let addr = listener.local_addr()?;
            println!("hull monitor: serving http://{addr}/metrics");
            use std::io::Write;
            std::io::stdout().flush()?;
            let settings = monitor::MonitorSettings {
                state_dir: config.runtime.state_dir.clone(),
                agent_timeout: std::time::Duration::from_secs(2),
            };
            tokio::select! {
                served = monitor::serve(listener, settings) => served?,
                sig = interrupted() => eprintln!("hull monitor: stopped by {sig}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { sandbox } => {
            let log = inspect::console_log(&config.runtime.state_dir, sandbox)?;
            use std::io::Write;
            std::io::stdout().write_all(&log)?;
            Ok(ExitCode::SUCCESS)
        }
        // (Handled before the config is loaded.)
        Command::InstallContainerd {
            containerd_config,
            hull_config,
        } => install_containerd(
            containerd_config,
            hull_config.as_ref().or(cli.config.as_ref()),
        ),
        Command::Bench {
            command:
                BenchCommand::Boot {
                    vm,
                    runs,
                    floor_initrd,
                    json,
                },
        } => {
            let spec = sandbox_spec(&config, vm);
            let floor = floor_initrd
                .clone()
                .unwrap_or_else(|| config.runtime.cache_dir.join("floor-initramfs.cpio"));
            let result = bench::boot(&config, &spec, floor, (*runs).max(1)).await?;
            print!("{result}");
            if let Some(path) = json {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                std::fs::write(path, serde_json::to_string_pretty(&result)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `hull install-containerd`: hull's config file, then containerd's.
fn install_containerd(
    containerd_config: &std::path::Path,
    hull_config: Option<&PathBuf>,
) -> Result<ExitCode> {
    use hull_runtime::install::{self, ConfigOutcome, Outcome};
    let hull_config = hull_config
        .cloned()
        .unwrap_or_else(|| PathBuf::from(hull_runtime::config::DEFAULT_CONFIG_PATH));
    // A config made from nothing gets the version the installed containerd reads
    // natively (3 for 2.x); without a containerd, version 2, which every release reads.
    let fresh = hull_runtime::host::find_binary(std::path::Path::new("containerd"))
        .and_then(|binary| install::containerd_major(&binary))
        .map_or(
            install::ConfigVersion::V2,
            install::ConfigVersion::for_containerd_major,
        );
    let report = install::setup(containerd_config, &hull_config, fresh)?;
    match report.config {
        ConfigOutcome::Written => println!(
            "wrote hull's config {} (the defaults, commented)",
            report.hull_config.display()
        ),
        ConfigOutcome::Kept => println!(
            "kept hull's config {} (it exists)",
            report.hull_config.display()
        ),
    }
    match report.runtime {
        Outcome::Added => println!(
            "added runtime io.containerd.hull.v2 (handler \"hull\", ConfigPath {}) to {}; restart containerd",
            report.hull_config.display(),
            containerd_config.display()
        ),
        Outcome::AlreadyThere => println!(
            "{} already has the hull runtime; nothing changed there",
            containerd_config.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `hull run`: the container's exit code; 127 when the command is not in the rootfs,
/// 125 when hull itself fails (as docker does),
/// 128+N when a signal ended the run before the container did.
async fn run_container(config: &Config, a: &RunArgs) -> ExitCode {
    let opts = RunOptions {
        image: a.image.clone(),
        rootfs: a.rootfs.clone(),
        tty: a.process.tty,
        interactive: a.process.interactive,
        env: a.process.env.clone(),
        workdir: a.process.workdir.clone(),
        user: a.process.user.clone(),
        memory: a.memory.clone(),
        cpus: a.cpus.clone(),
        pids_limit: a.pids_limit,
        read_only: a.read_only,
        volumes: a.volumes.clone(),
        hostname: a.hostname.clone(),
        command: a.command.clone(),
        keep_state: a.keep_state,
        name: a.name.clone(),
    };
    let mut signals = Signals::new();
    match hull_runtime::run::run(config, &opts, &mut signals).await {
        Ok(outcome) => {
            if outcome.exit.oom_killed {
                eprintln!(
                    "hull: OOM: the OOM killer killed a process of the container (memory limit {})",
                    a.memory.as_deref().unwrap_or("none")
                );
            }
            ExitCode::from(outcome.code())
        }
        Err(RunError::Interrupted(sig)) => {
            eprintln!("hull: {}", RunError::Interrupted(sig));
            ExitCode::from(128u8.saturating_add(u8::try_from(sig).unwrap_or(0)))
        }
        Err(e @ RunError::CommandNotFound { .. }) => {
            eprintln!("hull: {e}");
            ExitCode::from(127)
        }
        Err(e) => {
            eprintln!("hull: {e}");
            ExitCode::from(125)
        }
    }
}

/// `hull exec`: the process's exit code; 125 when hull itself fails, 128+N when a
/// signal ended it before the process did.
async fn exec_process(config: &Config, a: &ExecArgs) -> ExitCode {
    let opts = ExecOptions {
        name: a.name.clone(),
        tty: a.process.tty,
        interactive: a.process.interactive,
        env: a.process.env.clone(),
        workdir: a.process.workdir.clone(),
        user: a.process.user.clone(),
        command: a.command.clone(),
    };
    let mut signals = Signals::new();
    exec_exit_code(hull_runtime::run::exec::exec(config, &opts, &mut signals).await)
}

/// The exit code of `hull exec` and `hull debug exec`: the process's; 125 when hull
/// itself failed, 128+N when signal N ended it before the process did.
fn exec_exit_code(result: Result<ExitInfo, RunError>) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(u8::try_from(exit.status).unwrap_or(255)),
        Err(RunError::Interrupted(sig)) => {
            eprintln!("hull: {}", RunError::Interrupted(sig));
            ExitCode::from(128u8.saturating_add(u8::try_from(sig).unwrap_or(0)))
        }
        Err(e) => {
            eprintln!("hull: {e}");
            ExitCode::from(125)
        }
    }
}

/// `hull debug exec`: the process's exit code; 125 when hull itself fails or the
/// sandbox does not allow debug processes, 128+N when a signal ended it first.
async fn debug_exec(config: &Config, a: &DebugExecArgs) -> ExitCode {
    let opts = DebugExecOptions {
        sandbox: a.sandbox.clone(),
        tty: a.tty,
        interactive: a.interactive,
        command: a.command.clone(),
    };
    let mut signals = Signals::new();
    exec_exit_code(hull_runtime::run::debug::debug_exec(config, &opts, &mut signals).await)
}

/// `hull gc`: one line per orphan removed (or, with `--dry-run`, to remove); exits 1 if
/// one could not be removed entirely.
fn gc(config: &Config, dry_run: bool, verbose: bool) -> Result<ExitCode> {
    let state = &config.runtime.state_dir;
    let collected = gc::collect(state, dry_run)
        .with_context(|| format!("collecting orphaned sandboxes in {}", state.display()))?;
    let owner = |s: &gc::Status| match s.owner() {
        Some(pid) => format!("owner pid {pid}"),
        None => "no owner recorded".to_string(),
    };
    let mut orphans = 0;
    let mut failed = false;
    for c in &collected {
        match &c.outcome {
            gc::Outcome::Removed(Some(done)) => {
                orphans += 1;
                println!("removed {} ({} gone): {done}", c.id, owner(&c.status));
            }
            gc::Outcome::Removed(None) => {
                orphans += 1;
                println!("would remove {} ({} gone)", c.id, owner(&c.status));
            }
            gc::Outcome::Failed(e) => {
                orphans += 1;
                failed = true;
                eprintln!("hull: sandbox {} ({} gone): {e}", c.id, owner(&c.status));
            }
            gc::Outcome::Skipped if verbose => {
                println!(
                    "skipped {} ({}, {})",
                    c.id,
                    c.status.word(),
                    owner(&c.status)
                );
            }
            gc::Outcome::Skipped => {}
        }
    }
    if orphans == 0 {
        println!("nothing to do: no orphaned sandbox");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
