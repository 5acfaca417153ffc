//! Guest filesystems the host asks for (CreateSandbox's and CreateContainer's
//! `storages`): the sandbox's virtio-fs share, a virtio-blk disk found by its serial
//! (the pod's scratch disk), tmpfs, bind mounts of guest paths, and a container's
//! overlay (its image over the share, read-only, with its writable layer on the
//! scratch disk).

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    #[error("storage driver {0:?} is not supported (virtiofs, blk, overlay, tmpfs, bind)")]
    Driver(String),
    #[error("no virtio-blk disk with serial {serial:?} appeared within {waited_ms} ms")]
    NoDisk { serial: String, waited_ms: u128 },
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
    #[error("open the overlay's lower dir {path}: {error}")]
    Lower { path: PathBuf, error: String },
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
    /// blk: the serial of the disk whose /dev node is the source.
    pub disk_serial: Option<String>,
    /// overlay: the writable layer (upper and work dirs), made before the mount and
    /// removed after the unmount.
    pub layer_dirs: Vec<PathBuf>,
    /// overlay: the lower dirs, opened before the mount. A lower dir that is a mount
    /// on the host (containerd's rootfs in the share) is a virtio-fs submount in the
    /// guest, mounted on first open; overlayfs refuses a not yet mounted one (EINVAL).
    pub lower_dirs: Vec<PathBuf>,
}

/// An overlay's lower dirs and its writable layer's dirs.
type OverlayDirs = (Vec<PathBuf>, Vec<PathBuf>);

/// Where the pod's scratch disk is mounted; a container's writable layer must be
/// below it.
pub const SCRATCH_DIR: &str = "/run/hull/scratch";

/// How long a disk the host attached may take to show up in /sys/block.
const DISK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
    let mut disk_serial = None;
    let mut layer_dirs = Vec::new();
    let mut lower_dirs = Vec::new();
    let (source, fstype, remount_ro) = match s.driver.as_str() {
        "virtiofs" => {
            if s.source.is_empty() {
                return Err(field("source", &s.source, "a virtio-fs tag is required"));
            }
            (s.source.clone(), Some("virtiofs".to_owned()), false)
        }
        "blk" => {
            let serial_ok = !s.source.is_empty()
                && s.source.len() <= 20
                && s.source
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !serial_ok {
                return Err(field(
                    "source",
                    &s.source,
                    "a disk serial of 1-20 letters, digits, - or _ is required",
                ));
            }
            if !matches!(s.fstype.as_str(), "ext4" | "erofs") {
                return Err(field(
                    "fstype",
                    &s.fstype,
                    "a blk storage needs ext4 or erofs",
                ));
            }
            disk_serial = Some(s.source.clone());
            (String::new(), Some(s.fstype.clone()), false)
        }
        "overlay" => {
            (lower_dirs, layer_dirs) =
                overlay_layer(&data).map_err(|why| field("options", &data.join(","), why))?;
            ("overlay".to_owned(), Some("overlay".to_owned()), false)
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
    let data = (!data.is_empty()).then(|| data.join(","));
    Ok(MountPlan {
        source,
        target,
        fstype,
        flags,
        data,
        remount_ro,
        disk_serial,
        layer_dirs,
        lower_dirs,
    })
}

/// An overlay's options: `lowerdir` (absolute guest paths, `:`-separated), and its
/// writable layer, `upperdir` and `workdir`, two distinct dirs below [`SCRATCH_DIR`].
/// Nothing else: the host does not pick overlay features. Returns the lower dirs and
/// the writable layer's.
fn overlay_layer(options: &[String]) -> Result<OverlayDirs, &'static str> {
    let clean = |p: &str| {
        let path = Path::new(p);
        path.is_absolute() && !p.split('/').any(|c| c == ".." || c == ".") && !p.contains(',')
    };
    let (mut lower, mut upper, mut work) = (None, None, None);
    for o in options {
        match o.split_once('=') {
            Some(("lowerdir", v)) if lower.is_none() => lower = Some(v),
            Some(("upperdir", v)) if upper.is_none() => upper = Some(v),
            Some(("workdir", v)) if work.is_none() => work = Some(v),
            _ => return Err("an overlay takes only lowerdir, upperdir and workdir, once each"),
        }
    }
    let (Some(lower), Some(upper), Some(work)) = (lower, upper, work) else {
        return Err("an overlay needs lowerdir, upperdir and workdir");
    };
    if lower.is_empty() || !lower.split(':').all(clean) {
        return Err("lowerdir must be absolute guest paths without . or ..");
    }
    let scratch = Path::new(SCRATCH_DIR);
    let layer = |p: &str| clean(p) && Path::new(p).starts_with(scratch) && Path::new(p) != scratch;
    if !layer(upper) || !layer(work) || upper == work {
        return Err("upperdir and workdir must be two dirs below /run/hull/scratch");
    }
    Ok((
        lower.split(':').map(PathBuf::from).collect(),
        vec![PathBuf::from(upper), PathBuf::from(work)],
    ))
}

/// The /dev node of the virtio-blk disk whose serial is `serial`, waiting up to
/// [`DISK_WAIT`] for it to be probed.
fn disk_with_serial(serial: &str) -> Result<PathBuf, StorageError> {
    let start = std::time::Instant::now();
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for entry in entries.flatten() {
                let found = std::fs::read_to_string(entry.path().join("serial"))
                    .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial);
                if found {
                    return Ok(Path::new("/dev").join(entry.file_name()));
                }
            }
        }
        if start.elapsed() >= DISK_WAIT {
            return Err(StorageError::NoDisk {
                serial: serial.to_owned(),
                waited_ms: start.elapsed().as_millis(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Creates the mount point (and an overlay's writable layer) and mounts. A failed
/// mount leaves no writable layer behind.
pub fn mount(plan: &MountPlan) -> Result<(), StorageError> {
    let mounted = mount_steps(plan);
    if mounted.is_err() {
        remove_layer(plan);
    }
    mounted
}

fn mount_steps(plan: &MountPlan) -> Result<(), StorageError> {
    for dir in plan.layer_dirs.iter().chain([&plan.target]) {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Mkdir {
            path: dir.clone(),
            error: e.to_string(),
        })?;
    }
    for lower in &plan.lower_dirs {
        std::fs::File::open(lower).map_err(|e| StorageError::Lower {
            path: lower.clone(),
            error: e.to_string(),
        })?;
    }
    let source = match &plan.disk_serial {
        Some(serial) => disk_with_serial(serial)?.to_string_lossy().into_owned(),
        None => plan.source.clone(),
    };
    let err = |errno| StorageError::Mount {
        src: source.clone(),
        target: plan.target.clone(),
        errno,
    };
    nix::mount::mount(
        Some(source.as_str()),
        &plan.target,
        plan.fstype.as_deref(),
        plan.flags,
        plan.data.as_deref(),
    )
    .map_err(err)?;
    if plan.remount_ro {
        let remounted = nix::mount::mount(
            None::<&str>,
            &plan.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
        if let Err(errno) = remounted {
            let _ = nix::mount::umount2(&plan.target, nix::mount::MntFlags::MNT_DETACH);
            return Err(err(errno));
        }
    }
    Ok(())
}

/// Unmounts what [`mount`] mounted and removes an overlay's writable layer.
pub fn unmount(plan: &MountPlan) {
    if let Err(e) = nix::mount::umount2(&plan.target, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(path = %plan.target.display(), error = %e, "unmount failed");
    }
    remove_layer(plan);
}

fn remove_layer(plan: &MountPlan) {
    for dir in &plan.layer_dirs {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "removing a writable layer");
            }
        }
    }
    // The layer's own dir (`<scratch>/<container>`), once empty.
    if let Some(parent) = plan.layer_dirs.first().and_then(|d| d.parent()) {
        if parent != Path::new(SCRATCH_DIR) {
            let _ = std::fs::remove_dir(parent);
        }
    }
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
        assert!(plan(&storage("blk", "", "ext4", "/a")).is_err());
        assert!(plan(&storage("blk", "../sda", "ext4", "/a")).is_err());
        assert!(plan(&storage("blk", "hull-scratch", "", "/a")).is_err());
        assert!(plan(&storage("blk", "hull-scratch", "nfs", "/a")).is_err());
    }

    #[test]
    fn scratch_disk_by_serial() {
        let p = plan(&storage("blk", "hull-scratch", "ext4", "/run/hull/scratch")).unwrap();
        assert_eq!(p.disk_serial.as_deref(), Some("hull-scratch"));
        assert_eq!(p.fstype.as_deref(), Some("ext4"));
        assert!(p.layer_dirs.is_empty());
    }

    fn overlay(options: &[&str]) -> hull_proto::Storage {
        let mut s = storage("overlay", "", "overlay", "/run/hull/rootfs/c1");
        s.options = options.iter().map(|o| o.to_string()).collect();
        s
    }

    #[test]
    fn container_overlay_on_the_scratch_disk() {
        let p = plan(&overlay(&[
            "lowerdir=/run/hull/share/containers/c1/rootfs",
            "upperdir=/run/hull/scratch/c1/upper",
            "workdir=/run/hull/scratch/c1/work",
        ]))
        .unwrap();
        assert_eq!(p.fstype.as_deref(), Some("overlay"));
        assert_eq!(
            p.layer_dirs,
            vec![
                PathBuf::from("/run/hull/scratch/c1/upper"),
                PathBuf::from("/run/hull/scratch/c1/work")
            ]
        );
        assert_eq!(
            p.lower_dirs,
            vec![PathBuf::from("/run/hull/share/containers/c1/rootfs")]
        );
        assert!(p
            .data
            .as_deref()
            .unwrap()
            .starts_with("lowerdir=/run/hull/share/containers/c1/rootfs,upperdir="));
    }

    #[test]
    fn overlays_refused() {
        let lower = "lowerdir=/run/hull/share/c/rootfs";
        let up = "upperdir=/run/hull/scratch/c/upper";
        let work = "workdir=/run/hull/scratch/c/work";
        for bad in [
            vec![lower, up],
            vec![up, work],
            vec![lower, "upperdir=/etc/upper", work],
            vec![lower, up, "workdir=/run/hull/scratch/c/upper"],
            vec![lower, up, "workdir=/run/hull/scratch"],
            vec![lower, "upperdir=/run/hull/scratch/../etc", work],
            vec!["lowerdir=relative", up, work],
            vec!["lowerdir=", up, work],
            vec![lower, up, work, "metacopy=on"],
            vec![lower, lower, up, work],
        ] {
            assert!(plan(&overlay(&bad)).is_err(), "{bad:?}");
        }
    }
}
