//! `hull template build|ls|rm`: VM templates (hull-vmm).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use hull_runtime::config::Config;

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// Build the template of a pod's VM under this config (of the config's size, or
    /// the one given), unless it exists; print its digest.
    Build {
        #[arg(long)]
        vcpus: Option<u32>,
        #[arg(long)]
        memory_mib: Option<u32>,
    },
    /// Every template: digest, VM size, kernel, when made, disk use.
    Ls,
    /// Remove a template by digest, or all of them.
    Rm {
        #[arg(required_unless_present = "all")]
        digest: Option<String>,
        #[arg(long, conflicts_with = "digest")]
        all: bool,
    },
}

/// `hull template build|ls|rm`.
pub async fn template(config: &Config, command: &TemplateCommand) -> Result<ExitCode> {
    use hull_runtime::template::{self, TemplateStore};
    let store = TemplateStore::new(config);
    match command {
        TemplateCommand::Build { vcpus, memory_mib } => {
            let mut spec = hull_runtime::run::prepare::sandbox_spec(config, None, None, false);
            if let Some(v) = vcpus {
                spec.vcpus = *v;
            }
            if let Some(m) = memory_mib {
                spec.memory_mib = *m;
            }
            let digest = template::build(config, &spec)
                .await
                .context("building the template")?;
            println!("{digest}");
        }
        TemplateCommand::Ls => {
            println!(
                "{:<32}  {:>5}  {:>8}  {:>9}  {:<10}  KERNEL",
                "DIGEST", "VCPUS", "MEM_MIB", "DISK_MIB", "CREATED"
            );
            for t in store.list()? {
                let disk = t.disk_bytes as f64 / (1 << 20) as f64;
                match &t.record {
                    Some(r) => println!(
                        "{:<32}  {:>5}  {:>8}  {:>9.1}  {:<10}  {}",
                        t.digest,
                        r.key.vcpus,
                        r.key.memory_mib,
                        disk,
                        r.created,
                        r.key.kernel.path.display()
                    ),
                    None => println!(
                        "{:<32}  {:>5}  {:>8}  {:>9.1}  {:<10}  (incomplete: never used)",
                        t.digest, "-", "-", disk, "-"
                    ),
                }
            }
        }
        TemplateCommand::Rm { digest, all } => {
            let digests: Vec<String> = if *all {
                store.list()?.into_iter().map(|t| t.digest).collect()
            } else {
                digest.iter().cloned().collect()
            };
            for d in &digests {
                store
                    .remove(d)
                    .with_context(|| format!("removing template {d}"))?;
                println!("removed {d}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
