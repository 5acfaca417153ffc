//! The pod's cgroup on the host, from the sandbox (first) container's spec: where runc
//! would put the container, hull puts the shim and, through it, every process the VM
//! needs (they inherit it), so the guest's memory is charged to the pod.
//!
//! - A cgroup that does not exist is created; with a memory limit in the spec (the
//!   container's, or the pod's CRI annotation) it is limited to VM memory +
//!   `hypervisor.host_overhead_mib`. It is removed when the pod ends.
//! - A limit the host already has (the cgroup's own, or a parent's, e.g. kubelet's pod
//!   cgroup) is never exceeded: the VM gets at most limit - overhead, and a limit that
//!   leaves less than the smallest VM is refused by name before anything starts.
//! - No `linux.cgroupsPath`: no cgroup work (the shim's own cgroup is used).

use std::path::Path;

use super::record;
use super::spec::ContainerSpec;
use super::vm_size::{ANNOTATION_SANDBOX_MEMORY, MIN_GUEST_MIB};
use super::ShimError;
use crate::cgroup::{self, HostCgroup, Target};
use crate::config::Config;
use crate::sandbox::leftovers::Leftovers;
use crate::sandbox::SandboxSpec;

/// Sizes `vm` to fit the pod's cgroup, creates the cgroup (limited when the workload has
/// a limit) and moves the shim into it. Call before the VM's processes are started.
///
/// The dirs it is about to create are first recorded next to `bundle` (the sandbox's
/// own record replaces that one once the sandbox exists): a shim killed in between
/// still leaves `delete` the cgroups to remove.
pub fn enter(
    config: &Config,
    spec: &ContainerSpec,
    vm: &mut SandboxSpec,
    bundle: &Path,
) -> Result<Option<HostCgroup>, ShimError> {
    let Some(raw) = spec.cgroups_path() else {
        return Ok(None);
    };
    let rel = cgroup::parse_cgroups_path(raw)?;
    let target = Target::detect(Path::new(cgroup::DEFAULT_ROOT), rel)?;
    let overhead = config.hypervisor.host_overhead_mib;
    let inherited = target.inherited_memory_limit();
    let fitted = cgroup::fit_vm(
        vm.memory_mib,
        inherited,
        overhead,
        MIN_GUEST_MIB,
        &target.memory_dir(),
    )?;
    if fitted < vm.memory_mib {
        tracing::info!(from = vm.memory_mib, to = fitted, cgroup = %target.memory_dir().display(),
            "VM shrunk to fit the cgroup's memory limit");
        vm.memory_mib = fitted;
    }
    let limited =
        spec.memory_limit().is_some() || spec.annotation(ANNOTATION_SANDBOX_MEMORY).is_some();
    let limit = limited.then(|| cgroup::own_limit_bytes(vm.memory_mib, overhead));
    let planned = Leftovers {
        cgroups: target.missing_dirs(),
        ..Leftovers::default()
    };
    record::write(bundle, &planned);
    let mut cg = target.create(limit)?;
    cg.join_self()?;
    tracing::info!(cgroups = ?cg.dirs(), vm_mib = vm.memory_mib, limit, "shim joined the pod's cgroup");
    Ok(Some(cg))
}
