//! OCI images on the host: an image layout directory (`oci-layout`, `index.json`,
//! manifest, config, layers) is read, checked digest by digest, and unpacked into a
//! container's rootfs; its config (Env, Cmd, Entrypoint, WorkingDir, User) feeds the
//! runtime spec.
//!
//! `--image NAME` with a bare name (no `/`) is `<cache_dir>/images/NAME`; anything else
//! is a path. Either may end in `:TAG` to pick a manifest by its
//! `org.opencontainers.image.ref.name`; without one the only manifest (or `latest`) is
//! used.

pub mod layout;
pub mod unpack;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use layout::{Descriptor, Layout};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {dir} not found: {source}")]
    NoImage {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir} is not an OCI image layout: {what}")]
    NotALayout { dir: PathBuf, what: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid JSON in {what}: {message}")]
    BadJson { what: String, message: String },
    #[error("blob {digest} is missing from the image ({path}: {source})")]
    MissingBlob {
        digest: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("blob {digest} has {actual} bytes, the image says {expected}")]
    SizeMismatch {
        digest: String,
        expected: i64,
        actual: u64,
    },
    #[error("unsupported digest {0:?} (only sha256:<64 hex digits>)")]
    BadDigestSyntax(String),
    #[error("the image has no tag {tag:?} (tags: {tags:?})")]
    NoSuchTag { tag: String, tags: Vec<String> },
    #[error("the image's index.json lists no manifest")]
    NoManifest,
    #[error("the image has several manifests and none is tagged latest; name one with :TAG (tags: {tags:?})")]
    AmbiguousManifest { tags: Vec<String> },
    #[error("unsupported {what} media type {media_type:?}")]
    MediaType {
        what: &'static str,
        media_type: String,
    },
    #[error("layer {digest}: {message}")]
    Layer { digest: String, message: String },
    #[error("cannot prepare the rootfs {path}: {source}")]
    Rootfs {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The parts of an image config a container needs (the `config` object of the OCI
/// image config).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<ImageConfig>,
}

/// Where `--image` points: a layout dir and an optional tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub dir: PathBuf,
    pub tag: Option<String>,
}

impl ImageRef {
    /// `demo`, `demo:latest`, `/path/to/layout`, `./layout:v1`.
    pub fn parse(arg: &str, cache_dir: &Path) -> ImageRef {
        let (name, tag) = match arg.rsplit_once(':') {
            // A colon inside an existing path is part of the path.
            Some((n, t)) if !t.is_empty() && !t.contains('/') && !Path::new(arg).exists() => {
                (n, Some(t.to_string()))
            }
            _ => (arg, None),
        };
        let dir = if is_bare_name(name) {
            images_dir(cache_dir).join(name)
        } else {
            PathBuf::from(name)
        };
        ImageRef { dir, tag }
    }
}

/// A bare image name: no path separator, not `.`/`..`.
pub fn is_bare_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// Where named images live: `<cache_dir>/images/`.
pub fn images_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("images")
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// An opened, checked image: its config and its layers in order (lowest first).
#[derive(Debug)]
pub struct Image {
    layout: Layout,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
}

impl Image {
    /// Opens the layout, picks the manifest and reads the config (digests checked).
    /// Layer blobs are checked for presence here and for their digest when unpacked.
    pub fn open(r: &ImageRef) -> Result<Image, ImageError> {
        let _s = tracing::info_span!("image_open", dir = %r.dir.display()).entered();
        let layout = Layout::open(&r.dir)?;
        let index = layout.index()?;
        let desc = layout::pick_manifest(&index, r.tag.as_deref())?;
        if !desc.media_type.is_empty() && !MANIFEST_TYPES.contains(&desc.media_type.as_str()) {
            return Err(ImageError::MediaType {
                what: "manifest",
                media_type: desc.media_type.clone(),
            });
        }
        let manifest: layout::Manifest = layout.json_blob(desc, "manifest")?;
        let blob: ConfigBlob = layout.json_blob(&manifest.config, "image config")?;
        for l in &manifest.layers {
            if !l.media_type.is_empty() && !LAYER_TYPES.contains(&l.media_type.as_str()) {
                return Err(ImageError::MediaType {
                    what: "layer",
                    media_type: l.media_type.clone(),
                });
            }
            let path = layout.blob_path(&l.digest)?;
            if let Err(source) = std::fs::metadata(&path) {
                return Err(ImageError::MissingBlob {
                    digest: l.digest.clone(),
                    path,
                    source,
                });
            }
        }
        Ok(Image {
            layout,
            config: blob.config.unwrap_or_default(),
            layers: manifest.layers,
        })
    }

    /// Unpacks every layer, lowest first, into `rootfs` (created if missing).
    pub fn unpack(&self, rootfs: &Path) -> Result<(), ImageError> {
        let _s = tracing::info_span!("image_unpack", rootfs = %rootfs.display()).entered();
        std::fs::create_dir_all(rootfs).map_err(|source| ImageError::Rootfs {
            path: rootfs.to_path_buf(),
            source,
        })?;
        for l in &self.layers {
            let path = self.layout.verified_blob(l)?;
            unpack::apply_layer(rootfs, &path, &l.digest)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
