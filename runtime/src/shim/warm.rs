//! A pool VM a keeper booted ([`super::keeper`]), waiting for the pod that took it. It
//! is the pod's VM only if it is the VM the pod would have booted: same config, same
//! size, same kernel, initrd and devices. Anything else is torn down and the pod boots
//! cold, and the log says why.

use std::path::PathBuf;

use crate::config::Config;
use crate::sandbox::{Sandbox, SandboxSpec};

pub struct WarmSandbox {
    pub sandbox: Sandbox,
    /// What it was booted from.
    pub spec: SandboxSpec,
    /// The config file the keeper read (`$HULL_CONFIG` or the default).
    pub config_path: PathBuf,
    /// The keeper's own cgroup (`hull-pool/<id>`), where the VM was charged while idle.
    pub cgroup: Option<crate::cgroup::HostCgroup>,
    /// The VM's one NIC, on a tap in a netns of its own until a pod takes it.
    pub nic: Option<crate::network::PoolNic>,
}

/// The shim's one warm sandbox, until its pod's first container takes (or refuses) it.
pub type WarmSlot = std::sync::Arc<tokio::sync::Mutex<Option<WarmSandbox>>>;

impl WarmSandbox {
    /// Whether this VM is the one a pod with config `config_path` (containerd's runtime
    /// option, if any), VM `wanted` and `pod_veths` interfaces would boot; the reason
    /// when it is not.
    pub fn mismatch(
        &self,
        config_path: Option<&std::path::Path>,
        config: &Config,
        wanted: &SandboxSpec,
        pod_veths: usize,
    ) -> Option<String> {
        let pod_config = crate::config::source_path(config_path);
        if pod_config != self.config_path {
            return Some(format!(
                "the pod's config is {}, the pool VM's {}",
                pod_config.display(),
                self.config_path.display()
            ));
        }
        let nics = usize::from(self.nic.is_some());
        if pod_veths > nics {
            return Some(format!(
                "the pod has {pod_veths} network interfaces, the pool VM {nics} NIC(s)"
            ));
        }
        let booted = &self.spec;
        let differs = [
            ("vCPUs", booted.vcpus.to_string(), wanted.vcpus.to_string()),
            (
                "memory (MiB)",
                booted.memory_mib.to_string(),
                wanted.memory_mib.to_string(),
            ),
            (
                "kernel",
                booted.kernel.display().to_string(),
                wanted.kernel.display().to_string(),
            ),
            (
                "initrd",
                booted.initrd.display().to_string(),
                wanted.initrd.display().to_string(),
            ),
            ("kernel command line", booted.cmdline(), wanted.cmdline()),
            (
                "scratch disk",
                booted.scratch_disk.to_string(),
                wanted.scratch_disk.to_string(),
            ),
            (
                "jail",
                self.sandbox.jail_uid().is_some().to_string(),
                config.jail.enabled.to_string(),
            ),
        ];
        differs
            .into_iter()
            .find(|(_, b, w)| b != w)
            .map(|(what, b, w)| format!("the pod needs {what} {w}, the pool VM has {b}"))
    }
}
