//! A container's files in the sandbox share, `share/containers/<cid>/`: its rootfs,
//! its volumes and the guest's `config.json`.
//!
//! containerd's rootfs mount (an overlay of snapshots, usually) is mounted on the host
//! at `rootfs/`, or, when containerd gives none (`ctr run --rootfs`), the bundle's own
//! rootfs dir is bind-mounted there. Each volume of the spec is bound below `volumes/`
//! (a directory) or `files/` (a file). The share owns every mount from then on and
//! unmounts them when the container is removed or the sandbox goes.
//!
//! With the writable layer in the guest (`[rootfs] writable_layer = "guest-disk"`),
//! the guest does not write the shared rootfs: the container's root is an overlay the
//! agent mounts at `/run/hull/rootfs/<cid>`, the shared rootfs read-only below and
//! the writes in `<scratch>/<cid>/upper` on the pod's scratch disk.

use std::path::Path;

use containerd_shim_protos::api::Mount;
use oci_spec::runtime::Spec;

use super::spec::ContainerSpec;
use super::ShimError;
use crate::agent_client::StorageSpec;
use crate::sandbox::scratch;
use crate::sandbox::share::{self, Share};

/// Where the container's writes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritesTo {
    /// The shared rootfs itself (containerd's snapshot on the host).
    Share,
    /// An overlay in the guest whose upper dir is on the scratch disk.
    ScratchDisk,
}

/// A container placed in the share: the guest's spec, and the guest mounts the agent
/// makes for it first (its overlay root, with the writable layer in the guest).
#[derive(Debug)]
pub struct Placed {
    pub spec: Spec,
    pub storages: Vec<StorageSpec>,
}

/// Places container `cid` in the share (its rootfs from containerd's `rootfs` mounts or
/// the bundle's rootfs dir, then its volumes) and returns the guest's spec pointing at
/// them, also written to the container's dir as `config.json`, with the guest mounts
/// its root needs. On failure nothing of the container stays in the share.
pub async fn place(
    share: &mut Share,
    cid: &str,
    rootfs: &[Mount],
    bundle: &Path,
    spec: &ContainerSpec,
    writes_to: WritesTo,
) -> Result<Placed, ShimError> {
    let placed = place_all(share, cid, rootfs, bundle, spec, writes_to).await;
    if placed.is_err() {
        remove(share, cid);
    }
    placed
}

async fn place_all(
    share: &mut Share,
    cid: &str,
    rootfs: &[Mount],
    bundle: &Path,
    spec: &ContainerSpec,
    writes_to: WritesTo,
) -> Result<Placed, ShimError> {
    let (host_dir, guest_dir) = share
        .container_dir(cid)
        .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
    mount_rootfs(
        share,
        &host_dir.join("rootfs"),
        rootfs,
        bundle,
        spec.root_path(),
    )
    .await?;
    let mut guest = spec.guest.clone();
    let shared_root = format!("{guest_dir}/rootfs");
    let (root, storages) = match writes_to {
        WritesTo::Share => (shared_root, Vec::new()),
        WritesTo::ScratchDisk => {
            let (root, overlay) = scratch::container_root(cid, &shared_root);
            (root, vec![overlay])
        }
    };
    if let Some(r) = guest.root_mut() {
        r.set_path(root.into());
    }
    for volume in &spec.volumes {
        let placed = if volume.is_dir {
            share.add_volume_with(cid, volume.index, &volume.source, volume.how)
        } else {
            share.add_file(cid, volume.index, &volume.source, volume.how.readonly)
        };
        let guest_path = placed.map_err(|e| {
            ShimError::Internal(format!(
                "sharing {} for {}: {e}",
                volume.source.display(),
                volume.destination.display()
            ))
        })?;
        let mount = guest
            .mounts_mut()
            .as_mut()
            .and_then(|m| m.get_mut(volume.index))
            .ok_or_else(|| ShimError::internal("a volume's mount is not in the guest spec"))?;
        mount.set_source(Some(guest_path.into()));
        mount.set_typ(Some("bind".into()));
    }
    // For a person looking at a running pod's share; the agent is sent the spec.
    let config = host_dir.join("config.json");
    if let Err(e) = serde_json::to_vec(&guest)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&config, json))
    {
        tracing::debug!(path = %config.display(), error = %e, "cannot write the guest spec");
    }
    Ok(Placed {
        spec: guest,
        storages,
    })
}

/// Mounts the rootfs at `target` in the share.
async fn mount_rootfs(
    share: &mut Share,
    target: &Path,
    mounts: &[Mount],
    bundle: &Path,
    root_path: &Path,
) -> Result<(), ShimError> {
    std::fs::create_dir_all(target)
        .map_err(|e| ShimError::Internal(format!("cannot create {}: {e}", target.display())))?;
    tracing::info!(target = %target.display(), mounts = mounts.len(), "rootfs mount");
    match mounts {
        [] => {
            let src = bundle.join(root_path);
            share
                .bind(&src, target, false)
                .map_err(|e| ShimError::Internal(format!("rootfs {}: {e}", src.display())))?;
        }
        [m] => {
            containerd_shim::asynchronous::util::mount_rootfs(m, target)
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
            share.adopt_mount(target);
        }
        _ => {
            return Err(ShimError::InvalidArgument(format!(
                "{} rootfs mounts given; hull takes one (an overlay or a bind)",
                mounts.len()
            )))
        }
    }
    Ok(())
}

/// Unmounts everything of container `cid` in the share and removes its dir.
pub fn remove(share: &mut Share, cid: &str) {
    let dir = share.host_dir().join("containers").join(cid);
    share.unmount_under(&dir);
    for m in share::mounts_under(&dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    if share::mounts_under(&dir).is_empty() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::debug!(dir = %dir.display(), error = %e, "removing the container's share dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Volumes land in the share and the guest's spec points at them; a volume that
    /// cannot be placed leaves nothing of the container behind. Needs root (mounts).
    #[tokio::test]
    async fn volumes_are_placed_and_a_failure_leaves_nothing() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!(
                "SKIP volumes_are_placed_and_a_failure_leaves_nothing: needs root for bind mounts"
            );
            return;
        }
        let t = tempfile::tempdir().expect("tmp");
        let state = t.path().join("state");
        let bundle = t.path().join("bundle");
        let vol = t.path().join("vol");
        for d in [&state, &bundle.join("rootfs"), &vol] {
            std::fs::create_dir_all(d).expect("dir");
        }
        std::fs::write(vol.join("x"), b"1").expect("file");
        let spec = |mounts: serde_json::Value| {
            ContainerSpec::parse(
                &serde_json::to_vec(&json!({
                    "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
                    "root": {"path": "rootfs"},
                    "mounts": mounts
                }))
                .expect("json"),
            )
            .expect("spec")
        };
        let mut share = Share::create(&state).expect("share");
        let ok = spec(json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/v", "type": "bind", "source": vol, "options": ["rbind", "ro"]}
        ]));
        let placed = place(&mut share, "c1", &[], &bundle, &ok, WritesTo::Share)
            .await
            .expect("placed");
        assert!(placed.storages.is_empty());
        let out = serde_json::to_value(&placed.spec).expect("json");
        assert_eq!(out["root"]["path"], "/run/hull/share/containers/c1/rootfs");
        assert_eq!(
            out["mounts"][1]["source"],
            "/run/hull/share/containers/c1/volumes/1"
        );
        let c1 = share.host_dir().join("containers/c1");
        assert_eq!(std::fs::read(c1.join("volumes/1/x")).expect("volume"), b"1");
        assert!(c1.join("config.json").exists());
        // A source that vanished between load and place: nothing of c2 stays.
        let gone = t.path().join("gone");
        std::fs::create_dir(&gone).expect("dir");
        let bad = spec(json!([
            {"destination": "/v", "type": "bind", "source": vol, "options": ["rbind"]},
            {"destination": "/g", "type": "bind", "source": gone, "options": ["rbind"]}
        ]));
        std::fs::remove_dir(&gone).expect("rm");
        let e = place(&mut share, "c2", &[], &bundle, &bad, WritesTo::Share)
            .await
            .expect_err("gone");
        assert!(e.to_string().contains("for /g"), "{e}");
        let c2 = share.host_dir().join("containers/c2");
        assert!(!c2.exists() && share::mounts_under(&c2).is_empty());
        // With the writable layer on the scratch disk, the root is the agent's overlay
        // of the shared rootfs.
        let placed = place(&mut share, "c3", &[], &bundle, &ok, WritesTo::ScratchDisk)
            .await
            .expect("placed");
        let out = serde_json::to_value(&placed.spec).expect("json");
        assert_eq!(out["root"]["path"], "/run/hull/rootfs/c3");
        assert_eq!(
            placed.storages,
            [StorageSpec::overlay(
                "/run/hull/share/containers/c3/rootfs",
                "/run/hull/scratch/c3/upper",
                "/run/hull/scratch/c3/work",
                "/run/hull/rootfs/c3"
            )]
        );
        remove(&mut share, "c3");
        remove(&mut share, "c1");
        assert!(!c1.exists() && share::mounts_under(&c1).is_empty());
    }
}
