//! The container's rootfs in the sandbox share: containerd's rootfs mounts (an overlay
//! of snapshots, usually) are mounted on the host at `share/containers/<cid>/rootfs`,
//! or, when containerd gives none (`ctr run --rootfs`), the bundle's own rootfs dir is
//! bind-mounted there. The share owns the mount from then on and unmounts it when the
//! container is deleted or the sandbox goes.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;

use super::ShimError;
use crate::sandbox::share::{self, Share};

/// Mounts the rootfs of `cid` into the share; returns `(host path, guest path)`.
pub async fn mount(
    share: &mut Share,
    cid: &str,
    mounts: &[Mount],
    bundle: &Path,
    root_path: &str,
    readonly: bool,
) -> Result<(PathBuf, String), ShimError> {
    let (host_dir, guest_dir) = share
        .container_dir(cid)
        .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
    let target = host_dir.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(|e| ShimError::Internal(format!("cannot create {}: {e}", target.display())))?;
    tracing::info!(target = %target.display(), mounts = mounts.len(), "rootfs mount");
    match mounts {
        [] => {
            let src = bundle.join(root_path);
            share
                .bind(&src, &target, readonly)
                .map_err(|e| ShimError::Internal(format!("rootfs {}: {e}", src.display())))?;
        }
        [m] => {
            containerd_shim::asynchronous::util::mount_rootfs(m, &target)
                .await
                .map_err(|e| {
                    ShimError::Internal(format!(
                        "cannot mount the rootfs ({} {} {:?}) on {}: {e}",
                        m.type_,
                        m.source,
                        m.options,
                        target.display()
                    ))
                })?;
            share.adopt_mount(&target);
        }
        _ => {
            return Err(ShimError::InvalidArgument(format!(
                "{} rootfs mounts given; hull takes one (an overlay or a bind)",
                mounts.len()
            )))
        }
    }
    Ok((host_dir, format!("{guest_dir}/rootfs")))
}

/// Unmounts everything of `cid` in the share (rootfs, volumes, files).
pub fn unmount(share: &mut Share, cid: &str) {
    let dir = share.host_dir().join("containers").join(cid);
    share.unmount_under(&dir);
    // Anything still mounted there (not made by us) is detached, never deleted through.
    for m in share::mounts_under(&dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    if share::mounts_under(&dir).is_empty() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::debug!(dir = %dir.display(), error = %e, "removing the container's share dir");
        }
    }
}
