//! `hull bench boot`: how long a hull VM takes to be ready, phase by phase, next to the
//! same kernel booting a trivial /init on the same backend (the floor), in one run.
//! Figures only; nothing here asserts on time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::hypervisor::{self, VmSpec};
use crate::sandbox::state_dir::{new_id, StateDir};
use crate::sandbox::{Sandbox, SandboxSpec};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Select(#[from] hypervisor::SelectError),
    #[error("{0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("{0}")]
    Hypervisor(#[from] hypervisor::HypervisorError),
    #[error("floor run: {0}")]
    Floor(String),
    #[error("cannot create a state dir: {0}")]
    StateDir(std::io::Error),
}

/// min / median / max of a series, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Some(Stats {
            min: v[0],
            median,
            max: v[v.len() - 1],
            n: v.len(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub stats: Stats,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootBench {
    pub backend: String,
    pub runs: usize,
    pub hull: Vec<Phase>,
    pub floor: Vec<Phase>,
    /// hull agent ready (connected) / floor init reached, medians.
    pub ratio_ready: Option<f64>,
    /// hull boot + destroy until the VM process exited / floor until QEMU exited.
    pub ratio_exit: Option<f64>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Boots `runs` hull sandboxes and `runs` floor VMs, alternating, and collects phases.
pub async fn boot(
    config: &Config,
    spec: &SandboxSpec,
    floor_initrd: PathBuf,
    runs: usize,
) -> Result<BootBench, BenchError> {
    let mut series: Vec<(&'static str, Vec<f64>)> = [
        "processes started",
        "kernel banner",
        "agent started (/init)",
        "agent announced",
        "agent connected",
        "destroy -> VM exited",
        "total (launch -> VM exited)",
    ]
    .iter()
    .map(|n| (*n, Vec::new()))
    .collect();
    let mut floor: Vec<(&'static str, Vec<f64>)> = [
        "processes started",
        "kernel banner",
        "trivial /init reached",
        "total (launch -> VM exited)",
    ]
    .iter()
    .map(|n| (*n, Vec::new()))
    .collect();
    let mut backend = String::new();
    for i in 0..runs {
        // hull
        let t0 = Instant::now();
        let sandbox = Sandbox::boot(config, spec, hypervisor::select(config)?).await?;
        let r = sandbox.boot_report().clone();
        backend = r.backend.clone();
        let td = Instant::now();
        sandbox.destroy().await?;
        let destroyed = td.elapsed();
        let total = t0.elapsed();
        let values = [
            Some(secs(r.launched)),
            r.kernel.map(secs),
            r.init.map(secs),
            Some(secs(r.agent_ready)),
            Some(secs(r.connected)),
            Some(secs(destroyed)),
            Some(secs(total)),
        ];
        for ((_, s), v) in series.iter_mut().zip(values) {
            s.extend(v);
        }
        // floor
        let f = floor_once(config, spec, &floor_initrd).await?;
        for ((_, s), v) in floor.iter_mut().zip(f) {
            s.extend(v);
        }
        eprintln!("bench boot: run {}/{} done", i + 1, runs);
    }
    let phases = |s: Vec<(&'static str, Vec<f64>)>| -> Vec<Phase> {
        s.into_iter()
            .filter_map(|(name, v)| Stats::of(&v).map(|stats| Phase { name, stats }))
            .collect()
    };
    let hull = phases(series);
    let floor = phases(floor);
    let median =
        |p: &[Phase], name: &str| p.iter().find(|x| x.name == name).map(|x| x.stats.median);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    Ok(BootBench {
        backend,
        runs,
        ratio_ready: ratio(
            median(&hull, "agent connected"),
            median(&floor, "trivial /init reached"),
        ),
        ratio_exit: ratio(
            median(&hull, "total (launch -> VM exited)"),
            median(&floor, "total (launch -> VM exited)"),
        ),
        hull,
        floor,
    })
}

/// One boot of the same kernel with the floor initramfs (no vsock, nothing but a
/// trivial /init that prints a marker and reboots).
async fn floor_once(
    config: &Config,
    spec: &SandboxSpec,
    initrd: &std::path::Path,
) -> Result<[Option<f64>; 4], BenchError> {
    let state =
        StateDir::create(&config.runtime.state_dir, &new_id()).map_err(BenchError::StateDir)?;
    let mut hv = hypervisor::select(config)?;
    let vm = VmSpec {
        id: "floor".into(),
        state_dir: state.path().to_path_buf(),
        // The floor VM is a baseline: it runs unjailed, without sockets.
        sock_dir: state.path().to_path_buf(),
        jail: None,
        kernel: spec.kernel.clone(),
        initrd: initrd.to_path_buf(),
        cmdline: spec.cmdline(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        vsock: false,
        restore: None,
        devices: Vec::new(),
    };
    let t0 = Instant::now();
    let console = hv.launch(&vm).await?;
    let launched = t0.elapsed();
    let waited = tokio::time::timeout(config.boot.agent_timeout(), hv.wait()).await;
    let total = t0.elapsed();
    let mut progress = console.progress();
    let _ = tokio::time::timeout(Duration::from_millis(500), progress.wait_for(|p| p.closed)).await;
    let p = progress.borrow().clone();
    hv.stop(Duration::from_millis(200)).await?;
    match waited {
        Ok(Ok(st)) if st.success() => {}
        Ok(Ok(st)) => {
            return Err(BenchError::Floor(format!(
                "floor VM exited with {}: {}",
                crate::child::describe_status(&st),
                console.tail()
            )))
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(BenchError::Floor(format!(
                "floor VM did not stop: {}",
                console.tail()
            )))
        }
    }
    if p.floor.is_none() {
        return Err(BenchError::Floor(format!(
            "the floor init never printed its marker (is {} the floor initramfs?): {}",
            initrd.display(),
            console.tail()
        )));
    }
    Ok([
        Some(secs(launched)),
        p.kernel.map(|t| secs(t - t0)),
        p.floor.map(|t| secs(t - t0)),
        Some(secs(total)),
    ])
}

impl std::fmt::Display for BootBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "boot benchmark: {} runs each on {} (seconds from launch; min / median / max)",
            self.runs, self.backend
        )?;
        let table =
            |f: &mut std::fmt::Formatter<'_>, title: &str, p: &[Phase]| -> std::fmt::Result {
                writeln!(f, "{title}")?;
                for ph in p {
                    writeln!(
                        f,
                        "  {:<30} {:>7.3} {:>7.3} {:>7.3}",
                        ph.name, ph.stats.min, ph.stats.median, ph.stats.max
                    )?;
                }
                Ok(())
            };
        table(f, "hull (VM + agent):", &self.hull)?;
        table(f, "floor (same kernel, trivial /init):", &self.floor)?;
        let r = |x: Option<f64>| x.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into());
        writeln!(
            f,
            "ratio hull agent connected / floor init reached (medians): {}",
            r(self.ratio_ready)
        )?;
        writeln!(
            f,
            "ratio hull launch->exit incl. destroy / floor launch->exit (medians): {}",
            r(self.ratio_exit)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_odd_even() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).expect("stats");
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).expect("stats");
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(&[]).is_none());
    }
}
