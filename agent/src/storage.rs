//! Guest filesystems the host asks for (CreateSandbox's and CreateContainer's
//! `storages`): the sandbox's virtio-fs share, tmpfs, bind mounts of guest paths.
//! A block-device driver ("blk") slots in here without an API change.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    #[error("storage driver {0:?} is not supported (virtiofs, tmpfs, bind)")]
    Driver(String),
    #[error("storage {field} {value:?}: {why}")]
    Field {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("mount {src} on {target}: {errno}")]
    Mount {
        src: String,
        target: PathBuf,
        errno: nix::Error,
    },
    #[error("create mount point {path}: {error}")]
    Mkdir { path: PathBuf, error: String },
}

/// What mount(2) gets for one storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub source: String,
    pub target: PathBuf,
    pub fstype: Option<String>,
    pub flags: MsFlags,
    pub data: Option<String>,
    /// A bind mount made read-only needs a second, remounting call.
    pub remount_ro: bool,
}

/// Flags for the well-known options; the rest goes to the filesystem as data.
fn split_options(options: &[String]) -> (MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "bind" => flags |= MsFlags::MS_BIND,
            other => data.push(other.to_owned()),
        }
    }
    (flags, data)
}

/// Checks a storage request and turns it into a mount.
pub fn plan(s: &hull_proto::Storage) -> Result<MountPlan, StorageError> {
    let field = |field, value: &str, why| StorageError::Field {
        field,
        value: value.to_owned(),
        why,
    };
    let target = PathBuf::from(&s.mount_point);
    if !target.is_absolute() || s.mount_point.split('/').any(|c| c == "..") {
        return Err(field(
            "mount_point",
            &s.mount_point,
            "must be an absolute path without ..",
        ));
    }
    let (mut flags, data) = split_options(&s.options);
    if s.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = (!data.is_empty()).then(|| data.join(","));
    let (source, fstype, remount_ro) = match s.driver.as_str() {
        "virtiofs" => {
            if s.source.is_empty() {
                return Err(field("source", &s.source, "a virtio-fs tag is required"));
            }
            (s.source.clone(), Some("virtiofs".to_owned()), false)
        }
        "tmpfs" => ("tmpfs".to_owned(), Some("tmpfs".to_owned()), false),
        "bind" => {
            if !Path::new(&s.source).is_absolute() {
                return Err(field(
                    "source",
                    &s.source,
                    "a bind source must be an absolute guest path",
                ));
            }
            flags |= MsFlags::MS_BIND;
            let ro = flags.contains(MsFlags::MS_RDONLY);
            (s.source.clone(), None, ro)
        }
        other => return Err(StorageError::Driver(other.to_owned())),
    };
    if let Some(t) = &fstype {
        if !s.fstype.is_empty() && &s.fstype != t {
            return Err(field("fstype", &s.fstype, "does not match the driver"));
        }
    }
    Ok(MountPlan {
        source,
        target,
        fstype,
        flags,
        data,
        remount_ro,
    })
}

/// Creates the mount point and mounts.
pub fn mount(plan: &MountPlan) -> Result<(), StorageError> {
    std::fs::create_dir_all(&plan.target).map_err(|e| StorageError::Mkdir {
        path: plan.target.clone(),
        error: e.to_string(),
    })?;
    let err = |errno| StorageError::Mount {
        src: plan.source.clone(),
        target: plan.target.clone(),
        errno,
    };
    nix::mount::mount(
        Some(plan.source.as_str()),
        &plan.target,
        plan.fstype.as_deref(),
        plan.flags,
        plan.data.as_deref(),
    )
    .map_err(err)?;
    if plan.remount_ro {
        nix::mount::mount(
            None::<&str>,
            &plan.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(driver: &str, source: &str, fstype: &str, mp: &str) -> hull_proto::Storage {
        let mut s = hull_proto::Storage::new();
        s.driver = driver.into();
        s.source = source.into();
        s.fstype = fstype.into();
        s.mount_point = mp.into();
        s
    }

    #[test]
    fn virtiofs_share() {
        let p = plan(&storage(
            "virtiofs",
            "hullshare",
            "virtiofs",
            "/run/hull/share",
        ))
        .unwrap();
        assert_eq!(p.source, "hullshare");
        assert_eq!(p.fstype.as_deref(), Some("virtiofs"));
        assert_eq!(p.target, PathBuf::from("/run/hull/share"));
        assert!(p.flags.is_empty());
    }

    #[test]
    fn readonly_and_options() {
        let mut s = storage("tmpfs", "", "", "/run/x");
        s.readonly = true;
        s.options = vec!["nosuid".into(), "size=64m".into(), "mode=0755".into()];
        let p = plan(&s).unwrap();
        assert!(p.flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(p.data.as_deref(), Some("size=64m,mode=0755"));
        let mut b = storage("bind", "/run/hull/share/vol", "", "/mnt/vol");
        b.options = vec!["ro".into()];
        let p = plan(&b).unwrap();
        assert!(p.remount_ro && p.flags.contains(MsFlags::MS_BIND));
    }

    #[test]
    fn bad_requests() {
        assert_eq!(
            plan(&storage("nfs", "x", "", "/a")),
            Err(StorageError::Driver("nfs".into()))
        );
        assert!(plan(&storage("virtiofs", "t", "", "relative")).is_err());
        assert!(plan(&storage("virtiofs", "t", "", "/a/../b")).is_err());
        assert!(plan(&storage("virtiofs", "", "", "/a")).is_err());
        assert!(plan(&storage("bind", "rel", "", "/a")).is_err());
        assert!(plan(&storage("virtiofs", "t", "ext4", "/a")).is_err());
    }
}
