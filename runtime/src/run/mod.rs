//! `hull run`: one container in a fresh sandbox VM, from start to nothing left.
//!
//! 1. check every input (rootfs source, volumes, limits, command) before touching
//!    anything;
//! 2. create the sandbox's state dir and share; unpack the image (or copy --rootfs)
//!    into `share/containers/<cid>/rootfs`; bind-mount volumes into the share;
//!    generate the runtime spec (guest paths only);
//! 3. boot the VM (virtiofsd serves the share), CreateSandbox, CreateContainer,
//!    StartContainer;
//! 4. stream stdio, forward signals, wait for the exit after both outputs ended;
//! 5. RemoveContainer, DestroySandbox; on any error or a signal before the container
//!    runs, tear everything down instead (processes, mounts, state dir).

pub mod command;
pub mod debug;
pub mod exec;
pub mod io;
pub mod prepare;

use std::path::PathBuf;
use std::time::Duration;

use tracing::Instrument;

use crate::agent_client::{
    pump, AgentClient, AgentError, ExitInfo, ProcessRef, StdioSpec, StorageSpec, Stream,
};
use crate::config::Config;
use crate::hypervisor::{self, SelectError};
use crate::image::ImageError;
use crate::sandbox::{Sandbox, SandboxError};
use crate::spec::{self, units, BindMount, ContainerOptions, SpecError};
pub use io::Signals;
pub use prepare::{RootfsSource, Volume, MEMORY_OVERHEAD_MIB};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Image(#[from] ImageError),
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Backend(#[from] SelectError),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("invalid -v value {value:?}: {why}")]
    Volume { value: String, why: String },
    #[error("rootfs {path}: {why}")]
    Rootfs { path: PathBuf, why: String },
    #[error("{step}: {source}")]
    Agent {
        step: &'static str,
        source: AgentError,
    },
    #[error("command {command:?} not found in the container's rootfs (searched {searched})")]
    CommandNotFound { command: String, searched: String },
    #[error("interrupted by {}; everything was torn down", io::signal_name(*.0))]
    Interrupted(i32),
    /// The sandbox's policy does not allow what was asked (debug processes).
    #[error("{0}")]
    Refused(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RunError {
    fn agent(step: &'static str) -> impl FnOnce(AgentError) -> RunError {
        move |source| RunError::Agent { step, source }
    }
}

/// What `hull run` was asked for (the CLI's flags, unparsed values included, so that
/// every check happens here).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub image: Option<String>,
    pub rootfs: Option<PathBuf>,
    pub tty: bool,
    pub interactive: bool,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub memory: Option<String>,
    pub cpus: Option<String>,
    pub pids_limit: Option<i64>,
    pub read_only: bool,
    pub volumes: Vec<String>,
    pub hostname: Option<String>,
    pub command: Vec<String>,
    pub keep_state: bool,
    /// The sandbox's (and container's) name, for `hull exec`; random when unset.
    pub name: Option<String>,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    pub exit: ExitInfo,
}

impl RunOutcome {
    /// hull's own exit code: the container's.
    pub fn code(&self) -> u8 {
        u8::try_from(self.exit.status).unwrap_or(255)
    }
}

/// Runs one container; returns its exit once everything is torn down.
pub async fn run(
    config: &Config,
    opts: &RunOptions,
    signals: &mut Signals,
) -> Result<RunOutcome, RunError> {
    // 1. inputs
    let memory = opts
        .memory
        .as_deref()
        .map(units::parse_memory)
        .transpose()?;
    let cpus = opts.cpus.as_deref().map(units::parse_cpus).transpose()?;
    if opts.pids_limit.is_some_and(|p| p < 1) {
        return Err(RunError::Usage("--pids-limit must be at least 1".into()));
    }
    let volumes = opts
        .volumes
        .iter()
        .map(|v| prepare::parse_volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    let source = RootfsSource::open(
        opts.image.as_deref(),
        opts.rootfs.as_deref(),
        &config.runtime.cache_dir,
    )?;
    let image_config = source.config();
    spec::process_args(&image_config, &opts.command)?;
    let backend = hypervisor::select(config)?;

    // 2. host side
    let mut sandbox_spec = prepare::sandbox_spec(config, memory, cpus, opts.keep_state);
    sandbox_spec.id = opts.name.clone();
    let mut sandbox = Sandbox::create(config, &sandbox_spec, backend)?;
    // Jailed, the sandbox's cgroup: hull and the VM's processes are charged to it; it
    // goes (this process moved back) before the sandbox value.
    let cgroup = crate::jail::run_cgroup::enter_if_jailed(
        config,
        sandbox.id(),
        sandbox.jail_uid(),
        memory.is_some(),
        sandbox_spec.memory_mib,
    )
    .map_err(SandboxError::from)?;
    if let Some(cg) = &cgroup {
        sandbox.note_cgroups(cg.created())?;
    }
    let cid = sandbox.id().to_string();
    let hostname = opts
        .hostname
        .clone()
        .unwrap_or_else(|| cid.chars().take(12).collect());
    let setup = async {
        let (spec, storages) = prepare_container(
            &mut sandbox,
            &cid,
            &source,
            &volumes,
            opts,
            memory,
            cpus,
            &hostname,
        )
        .await?;
        // 3. VM (from its template, if templates are on) and container
        sandbox_spec.restore = crate::template::for_sandbox(config, &sandbox_spec).await;
        sandbox.start(config, &sandbox_spec).await?;
        sandbox.prepare_guest(&hostname).await?;
        let agent = sandbox.agent_or_err()?.clone();
        let stdio = Attach {
            tty: opts.tty,
            interactive: opts.interactive,
        }
        .stdio();
        agent
            .create_container(&cid, &spec, &storages, &stdio)
            .instrument(tracing::info_span!("container_create"))
            .await
            .map_err(RunError::agent("creating the container"))?;
        agent
            .start_container(&cid)
            .instrument(tracing::info_span!("container_start"))
            .await
            .map_err(RunError::agent("starting the container"))?;
        Ok::<AgentClient, RunError>(agent)
    };
    let started = tokio::select! {
        r = setup => r,
        sig = signals.recv() => Err(RunError::Interrupted(sig)),
    };
    let agent = match started {
        Ok(a) => a,
        Err(e) => {
            sandbox.teardown().await;
            return Err(e);
        }
    };

    // 4. streams and exit
    let stdio = Attach {
        tty: opts.tty,
        interactive: opts.interactive,
    };
    let attached = attach(
        &agent,
        &ProcessRef::init(&cid),
        stdio,
        signals,
        config.boot.shutdown_timeout(),
    )
    .instrument(tracing::info_span!("container_attach"))
    .await;

    // 5. teardown
    let removed = match &attached {
        Ok(_) => agent
            .remove_container(&cid, config.boot.shutdown_timeout().as_secs() as u32)
            .await
            .map_err(RunError::agent("removing the container")),
        Err(_) => Ok(()),
    };
    drop(agent);
    match attached {
        Ok(exit) => {
            if let Err(e) = removed {
                tracing::warn!(error = %e, "the agent could not remove the container");
            }
            if let Err(e) = sandbox.destroy().await {
                tracing::warn!(error = %e, "destroying the sandbox");
            }
            Ok(RunOutcome { exit })
        }
        Err(e) => {
            sandbox.teardown().await;
            Err(e)
        }
    }
}

/// Fills the share (rootfs, volumes) and returns the spec (also written next to the
/// rootfs as `config.json`, for debugging with --keep-state).
#[allow(clippy::too_many_arguments)]
async fn prepare_container(
    sandbox: &mut Sandbox,
    cid: &str,
    source: &RootfsSource,
    volumes: &[Volume],
    opts: &RunOptions,
    memory: Option<u64>,
    cpus: Option<f64>,
    hostname: &str,
) -> Result<(oci_spec::runtime::Spec, Vec<StorageSpec>), RunError> {
    let share = sandbox
        .share_mut()
        .ok_or_else(|| RunError::Internal("the sandbox has no share".into()))?;
    let (host_dir, guest_dir) = share.container_dir(cid).map_err(SandboxError::from)?;
    let rootfs_host = host_dir.join("rootfs");
    // Unpacking is blocking file work; it is short next to the boot, and a signal
    // during it is handled right after.
    source.materialize(&rootfs_host)?;
    let mut mounts = Vec::new();
    for (n, v) in volumes.iter().enumerate() {
        let guest = share
            .add_volume(cid, n, &v.host, v.readonly)
            .map_err(SandboxError::from)?;
        mounts.push(BindMount {
            source: guest,
            destination: v.container.clone(),
            readonly: v.readonly,
        });
    }
    let copts = ContainerOptions {
        args: opts.command.clone(),
        env: opts.env.clone(),
        workdir: opts.workdir.clone(),
        user: opts.user.clone(),
        memory,
        cpus,
        pids_limit: opts.pids_limit,
        read_only: opts.read_only,
        terminal: opts.tty,
        hostname: hostname.to_string(),
        mounts,
    };
    let rootfs_guest = format!("{guest_dir}/rootfs");
    let mut spec = spec::generate(&copts, &source.config(), &rootfs_guest, Some(&rootfs_host))?;
    // The writes on the scratch disk: the root is the agent's overlay of the share's.
    let mut storages = Vec::new();
    if sandbox.has_scratch_disk() {
        let (root, overlay) = crate::sandbox::scratch::container_root(cid, &rootfs_guest);
        if let Some(mut r) = spec.root().clone() {
            r.set_path(root.into());
            spec.set_root(Some(r));
        }
        storages.push(overlay);
    }
    if opts.tty {
        if let Some(mut process) = spec.process().clone() {
            process.set_console_size(io::console_size());
            spec.set_process(Some(process));
        }
    }
    if let Some(process) = spec.process() {
        let args = process.args().clone().unwrap_or_default();
        let env = process.env().clone().unwrap_or_default();
        let volume_dirs: Vec<String> = copts.mounts.iter().map(|m| m.destination.clone()).collect();
        if let Some(cmd) = args.first() {
            command::check(&rootfs_host, cmd, &env, &volume_dirs).map_err(|searched| {
                RunError::CommandNotFound {
                    command: cmd.clone(),
                    searched,
                }
            })?;
        }
    }
    let json = spec::to_json(&spec)?;
    std::fs::write(host_dir.join("config.json"), &json).map_err(|e| RunError::Rootfs {
        path: host_dir.join("config.json"),
        why: e.to_string(),
    })?;
    Ok((spec, storages))
}

/// How a process's stdio is attached to hull's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attach {
    /// The process has a terminal (stdout only; stderr is the same pty).
    pub tty: bool,
    /// hull's stdin is copied to the process.
    pub interactive: bool,
}

impl Attach {
    /// The pipes the agent makes for a process attached this way: stdout always,
    /// stdin when interactive, stderr unless the terminal carries it.
    pub fn stdio(self) -> StdioSpec {
        StdioSpec {
            terminal: self.tty,
            stdin: self.interactive,
            stdout: true,
            stderr: !self.tty,
        }
    }
}

/// Streams stdio until the process exits and both outputs reached EOF; forwards
/// SIGINT/SIGTERM/SIGHUP. A second signal, or a container that does not exit within
/// `grace` of a forwarded one, ends the run with [`RunError::Interrupted`].
pub async fn attach(
    agent: &AgentClient,
    process: &ProcessRef,
    opts: Attach,
    signals: &mut Signals,
    grace: Duration,
) -> Result<ExitInfo, RunError> {
    let (cid, eid) = (process.container_id.as_str(), process.exec_id.as_str());
    let _raw = if opts.tty && opts.interactive {
        io::RawMode::enable()
    } else {
        None
    };
    let stdout = tokio::spawn(pump::pump_output(
        agent.clone(),
        process.clone(),
        Stream::Stdout,
        tokio::io::stdout(),
    ));
    let stderr = (!opts.tty).then(|| {
        tokio::spawn(pump::pump_output(
            agent.clone(),
            process.clone(),
            Stream::Stderr,
            tokio::io::stderr(),
        ))
    });
    let stdin = opts.interactive.then(|| {
        tokio::spawn(pump::pump_stdin(
            agent.clone(),
            process.clone(),
            tokio::io::stdin(),
        ))
    });
    let mut winch = if opts.tty {
        if let Some((rows, cols)) = io::window_size() {
            if let Err(e) = agent.resize_tty(cid, eid, rows, cols).await {
                tracing::warn!(error = %e, "cannot set the container's window size");
            }
        }
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };

    let wait = agent.wait_process(cid, eid);
    tokio::pin!(wait);
    let mut forwarded: Option<(i32, tokio::time::Instant)> = None;
    let exit = loop {
        let deadline = forwarded.map(|(_, t)| t + grace);
        tokio::select! {
            r = &mut wait => break r.map_err(RunError::agent("waiting for the container"))?,
            sig = signals.recv() => {
                if forwarded.is_some() {
                    return Err(RunError::Interrupted(sig));
                }
                tracing::info!(signal = io::signal_name(sig), "forwarding to the container");
                if let Err(e) = agent.signal_process(cid, eid, sig, false).await {
                    tracing::warn!(error = %e, "cannot forward the signal; tearing down");
                    return Err(RunError::Interrupted(sig));
                }
                forwarded = Some((sig, tokio::time::Instant::now()));
            }
            _ = async { match winch.as_mut() { Some(w) => { w.recv().await; } None => std::future::pending().await } } => {
                if let Some((rows, cols)) = io::window_size() {
                    let _ = agent.resize_tty(cid, eid, rows, cols).await;
                }
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                let sig = forwarded.map(|(s, _)| s).unwrap_or(libc::SIGTERM);
                tracing::warn!("the container did not exit within {grace:?} of {}", io::signal_name(sig));
                return Err(RunError::Interrupted(sig));
            }
        }
    };
    // The exit counts only once both outputs are drained.
    for (name, task) in [("stdout", Some(stdout)), ("stderr", stderr)] {
        let Some(task) = task else { continue };
        match task.await {
            Ok(Ok(n)) => tracing::debug!(stream = name, bytes = n, "output drained"),
            Ok(Err(e)) => {
                return Err(RunError::Agent {
                    step: "reading the container's output",
                    source: e,
                })
            }
            Err(e) => return Err(RunError::Internal(format!("{name} pump: {e}"))),
        }
    }
    if let Some(t) = stdin {
        t.abort();
    }
    Ok(exit)
}

#[cfg(test)]
mod tests;
