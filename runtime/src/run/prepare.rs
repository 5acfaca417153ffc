//! Everything `hull run` checks and builds on the host before the VM boots: the
//! rootfs source (image or directory), volumes, and the VM's size.

use std::path::{Path, PathBuf};

use super::RunError;
use crate::config::{Config, WritableLayer};
use crate::image::{Image, ImageConfig, ImageRef};
use crate::sandbox::SandboxSpec;

/// Guest memory on top of the container's limit: the guest kernel, the agent and the
/// page cache of the share. Guest memory = limit + this, and at least the config's
/// `guest.memory_mib`.
pub const MEMORY_OVERHEAD_MIB: u64 = 128;

/// Where the container's rootfs comes from.
#[derive(Debug)]
pub enum RootfsSource {
    Image(Box<Image>),
    Dir(PathBuf),
}

impl RootfsSource {
    /// From `--image` / `--rootfs`: exactly one of them.
    pub fn open(
        image: Option<&str>,
        rootfs: Option<&Path>,
        cache_dir: &Path,
    ) -> Result<RootfsSource, RunError> {
        match (image, rootfs) {
            (Some(_), Some(_)) => Err(RunError::Usage(
                "give either --image or --rootfs, not both".into(),
            )),
            (None, None) => Err(RunError::Usage(
                "give --image OCI_LAYOUT_DIR|NAME or --rootfs DIR".into(),
            )),
            (Some(i), None) => Ok(RootfsSource::Image(Box::new(Image::open(
                &ImageRef::parse(i, cache_dir),
            )?))),
            (None, Some(dir)) => {
                let meta = std::fs::metadata(dir).map_err(|e| RunError::Rootfs {
                    path: dir.to_path_buf(),
                    why: e.to_string(),
                })?;
                if !meta.is_dir() {
                    return Err(RunError::Rootfs {
                        path: dir.to_path_buf(),
                        why: "not a directory".into(),
                    });
                }
                Ok(RootfsSource::Dir(dir.to_path_buf()))
            }
        }
    }

    pub fn config(&self) -> ImageConfig {
        match self {
            RootfsSource::Image(i) => i.config.clone(),
            RootfsSource::Dir(_) => ImageConfig::default(),
        }
    }

    /// Unpacks the image, or copies the directory (`cp -a`), into `dst`.
    pub fn materialize(&self, dst: &Path) -> Result<(), RunError> {
        let _s = tracing::info_span!("rootfs_prepare", dst = %dst.display()).entered();
        match self {
            RootfsSource::Image(i) => Ok(i.unpack(dst)?),
            RootfsSource::Dir(src) => {
                std::fs::create_dir_all(dst).map_err(|e| RunError::Rootfs {
                    path: dst.to_path_buf(),
                    why: e.to_string(),
                })?;
                let out = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(src.join("."))
                    .arg(dst)
                    .output()
                    .map_err(|e| RunError::Rootfs {
                        path: src.clone(),
                        why: format!("cannot run cp: {e}"),
                    })?;
                if !out.status.success() {
                    return Err(RunError::Rootfs {
                        path: src.clone(),
                        why: format!(
                            "copy failed: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    });
                }
                Ok(())
            }
        }
    }
}

/// A `-v HOST_DIR:CONTAINER_DIR[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub container: String,
    pub readonly: bool,
}

pub fn parse_volume(v: &str) -> Result<Volume, RunError> {
    let bad = |why: &str| RunError::Volume {
        value: v.to_string(),
        why: why.to_string(),
    };
    let parts: Vec<&str> = v.split(':').collect();
    let (host, container, readonly) = match parts.as_slice() {
        [h, c] => (*h, *c, false),
        [h, c, "ro"] => (*h, *c, true),
        [h, c, "rw"] => (*h, *c, false),
        [_, _, m] => return Err(bad(&format!("unknown mode {m:?} (ro or rw)"))),
        _ => return Err(bad("expected HOST_DIR:CONTAINER_DIR[:ro]")),
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(bad("both paths must be absolute"));
    }
    if container == "/" || container.split('/').any(|c| c == "..") {
        return Err(bad(
            "the container path must be a directory below /, without ..",
        ));
    }
    let host = std::fs::canonicalize(host).map_err(|e| bad(&format!("host dir {host}: {e}")))?;
    if !host.is_dir() {
        return Err(bad(&format!("{} is not a directory", host.display())));
    }
    Ok(Volume {
        host,
        container: container.to_string(),
        readonly,
    })
}

/// The sandbox for one container: share attached, memory and vCPUs from its limits.
pub fn sandbox_spec(
    config: &Config,
    memory: Option<u64>,
    cpus: Option<f64>,
    keep_state: bool,
) -> SandboxSpec {
    let mut spec = SandboxSpec::from_config(config);
    spec.share = true;
    spec.scratch_disk = config.rootfs.writable_layer == WritableLayer::GuestDisk;
    spec.keep_state = keep_state;
    if let Some(bytes) = memory {
        let mib = bytes.div_ceil(1 << 20) + MEMORY_OVERHEAD_MIB;
        spec.memory_mib = spec.memory_mib.max(u32::try_from(mib).unwrap_or(u32::MAX));
    }
    if let Some(c) = cpus {
        spec.vcpus = spec.vcpus.max(c.ceil() as u32);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes() {
        let t = tempfile::tempdir().expect("tmp");
        let h = t.path().to_str().expect("utf8");
        let v = parse_volume(&format!("{h}:/data:ro")).expect("ro");
        assert!(v.readonly && v.container == "/data");
        assert!(!parse_volume(&format!("{h}:/data")).expect("rw").readonly);
        for bad in [
            h.to_string(),
            format!("{h}:data"),
            "rel:/data".to_string(),
            format!("{h}:/data:rx"),
            format!("{h}/nope:/data"),
            format!("{h}:/"),
            format!("{h}:/a/../b"),
        ] {
            let err = parse_volume(&bad).expect_err(&bad);
            assert!(err.to_string().contains(&bad), "{err}");
        }
    }

    #[test]
    fn vm_size_follows_limits() {
        let config = Config::default();
        let s = sandbox_spec(&config, None, None, false);
        assert_eq!(
            (s.memory_mib, s.vcpus),
            (config.guest.memory_mib, config.guest.vcpus)
        );
        assert!(s.share);
        let s = sandbox_spec(&config, Some(512 << 20), Some(1.5), false);
        assert_eq!((s.memory_mib, s.vcpus), (640, 2));
        let s = sandbox_spec(&config, Some(16 << 20), Some(0.5), false);
        assert_eq!(
            (s.memory_mib, s.vcpus),
            (config.guest.memory_mib, config.guest.vcpus)
        );
    }

    #[test]
    fn source_errors() {
        let cache = Path::new("/nonexistent-cache");
        let err = RootfsSource::open(None, None, cache).expect_err("none");
        assert!(err.to_string().contains("--image"), "{err}");
        let err = RootfsSource::open(Some("/no/such/image"), None, cache).expect_err("missing");
        assert!(err.to_string().contains("/no/such/image"), "{err}");
        let err = RootfsSource::open(Some("demo"), None, cache).expect_err("missing demo");
        assert!(
            err.to_string().contains("/nonexistent-cache/images/demo"),
            "{err}"
        );
    }
}
