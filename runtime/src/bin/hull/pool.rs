//! `hull pool status|fill|drain`: the warm pool of booted VMs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use hull_runtime::config::Config;

#[derive(Subcommand)]
pub enum PoolCommand {
    /// The pool's size and its VMs: idle (ready to be taken) or booting.
    Status,
    /// Start VMs until the pool has `[pool] size` (containerd's `start` does this after
    /// every pod that takes one).
    Fill {
        /// Wait up to this many seconds for them to be ready, and fail if any is not.
        #[arg(long)]
        wait: Option<f64>,
    },
    /// Destroy every pool VM (idle ones at once; a keeper that does not stop within
    /// the timeout is killed). VMs that pods took are not pool VMs any more.
    Drain {
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

/// `hull pool status|fill|drain`.
pub fn pool(
    config: &Config,
    config_path: Option<&Path>,
    command: &PoolCommand,
) -> Result<ExitCode> {
    use hull_runtime::pool;
    let state = &config.runtime.state_dir;
    let seconds = |s: f64| {
        std::time::Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow::anyhow!("{s} is not a number of seconds"))
    };
    match command {
        PoolCommand::Status => {
            let members = pool::members(state);
            let idle = members.iter().filter(|m| m.idle).count();
            let classes: Vec<String> = config
                .pool_classes()
                .iter()
                .map(|c| format!("{} x {}x{}MiB", c.size, c.vcpus, c.memory_mib))
                .collect();
            println!(
                "pool of {}: {idle} idle, {} booting",
                if classes.is_empty() {
                    "none".to_string()
                } else {
                    classes.join(", ")
                },
                members.len() - idle
            );
            for m in &members {
                let what = if m.idle { "idle" } else { "booting" };
                println!("{} {what} keeper {} {}", m.entry.id, m.pid, m.size);
            }
        }
        PoolCommand::Fill { wait } => {
            let classes = config.pool_classes();
            if classes.is_empty() {
                anyhow::bail!(
                    "the config keeps no pool ([pool] size and every [[pool.class]] size are 0)"
                );
            }
            let wanted: usize = classes.iter().map(|c| c.size as usize).sum();
            let shim = shim_binary()?;
            let started =
                pool::fill(state, &classes, &shim, config_path).context("filling the pool")?;
            println!("started {} pool VM(s)", started.len());
            if let Some(wait) = wait {
                let idle = pool::wait_ready(state, seconds(*wait)?);
                println!("{idle} pool VM(s) idle");
                if idle < wanted {
                    anyhow::bail!(
                        "only {idle} of {wanted} pool VMs are ready after {wait} s (their logs: {})",
                        pool::dir(state).display()
                    );
                }
            }
        }
        PoolCommand::Drain { timeout } => {
            let stopped = pool::drain(state, seconds(*timeout)?);
            println!("drained {stopped} pool VM(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The shim binary: beside this one, else on PATH.
fn shim_binary() -> Result<PathBuf> {
    const SHIM: &str = "containerd-shim-hull-v2";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(SHIM)))
        .filter(|p| p.is_file());
    beside
        .or_else(|| hull_runtime::host::find_binary(Path::new(SHIM)))
        .ok_or_else(|| anyhow::anyhow!("{SHIM} is neither beside hull nor on PATH"))
}
