//! The cgroup of a `hull run` sandbox: `hull/<sandbox id>-<jail uid>` in every hierarchy hull
//! uses (as the shim's pod cgroup, see `crate::cgroup`), limited like a pod's: with a
//! memory limit (`--memory`) to guest memory + `hypervisor.host_overhead_mib`. `hull
//! run` joins it before the VM's processes start, so they and hull itself are charged
//! to it; dropping the value moves hull back and removes the cgroup (killing anything
//! left in it).

use std::path::{Path, PathBuf};

use super::JailError;
use crate::cgroup::{self, HostCgroup, Target};
use crate::config::Config;

/// The cgroup path (relative to each hierarchy's root) of sandbox `id` jailed as
/// `uid`: the id is unique in one state dir only, the leased uid on the whole host.
pub fn rel_path(id: &str, uid: u32) -> PathBuf {
    Path::new("hull").join(format!("{id}-{uid}"))
}

/// Creates and joins the cgroup of sandbox `id` whose VM has `vm_mib` of memory.
pub fn enter(
    config: &Config,
    id: &str,
    uid: u32,
    limited: bool,
    vm_mib: u32,
) -> Result<HostCgroup, JailError> {
    let target = Target::detect(Path::new(cgroup::DEFAULT_ROOT), rel_path(id, uid))?;
    remove_stale(&target.dirs(), uid);
    let limit =
        limited.then(|| cgroup::own_limit_bytes(vm_mib, config.hypervisor.host_overhead_mib));
    let mut cg = target.create(limit)?;
    cg.join_self()?;
    tracing::info!(cgroups = ?cg.dirs(), vm_mib, limit, "hull run joined the sandbox's cgroup");
    Ok(cg)
}

/// Removes the cgroups a killed `hull run` left for `uid` (siblings of `dirs` named
/// `*-<uid>`), killing what is still in them: the uid is leased to this sandbox
/// alone now, so nothing in them belongs to a live sandbox, and a leftover of the same
/// name would otherwise be taken over with its old limit and never removed.
fn remove_stale(dirs: &[PathBuf], uid: u32) {
    let suffix = format!("-{uid}");
    let stale: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| d.parent())
        .filter_map(|parent| std::fs::read_dir(parent).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix) && e.path().is_dir())
        .map(|e| e.path())
        .collect();
    if !stale.is_empty() {
        tracing::warn!(
            ?stale,
            uid,
            "removing the cgroups a killed hull run left for this jail uid"
        );
        cgroup::remove_dirs(&stale, true);
    }
}

/// [`enter`] when the sandbox is jailed (`jail_uid`), nothing otherwise.
pub fn enter_if_jailed(
    config: &Config,
    id: &str,
    jail_uid: Option<u32>,
    limited: bool,
    vm_mib: u32,
) -> Result<Option<HostCgroup>, JailError> {
    match jail_uid {
        Some(uid) => enter(config, id, uid, limited, vm_mib).map(Some),
        None => Ok(None),
    }
}
