//! An OCI image layout on disk: `oci-layout`, `index.json`, and content-addressed blobs
//! under `blobs/sha256/`. Every blob read through here is checked against its digest.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::ImageError;

/// The annotation that names a manifest's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct OciLayout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

/// A checked OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Opens `dir`, checking that it is an OCI image layout.
    pub fn open(dir: &Path) -> Result<Layout, ImageError> {
        let meta = std::fs::metadata(dir).map_err(|source| ImageError::NoImage {
            dir: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ImageError::NoImage {
                dir: dir.to_path_buf(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let marker = dir.join("oci-layout");
        let text = std::fs::read(&marker).map_err(|source| ImageError::NotALayout {
            dir: dir.to_path_buf(),
            what: format!("cannot read {}: {source}", marker.display()),
        })?;
        let layout: OciLayout =
            serde_json::from_slice(&text).map_err(|e| ImageError::NotALayout {
                dir: dir.to_path_buf(),
                what: format!("{}: {e}", marker.display()),
            })?;
        if !layout.version.starts_with("1.") {
            return Err(ImageError::NotALayout {
                dir: dir.to_path_buf(),
                what: format!("unsupported imageLayoutVersion {:?}", layout.version),
            });
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn index(&self) -> Result<Index, ImageError> {
        let path = self.dir.join("index.json");
        let text = std::fs::read(&path).map_err(|source| ImageError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| ImageError::BadJson {
            what: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The host path of a blob; the digest must be `sha256:<64 hex>`.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .ok_or_else(|| ImageError::BadDigestSyntax(digest.to_string()))?;
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    /// Checks that the blob exists and hashes to its digest; returns its path.
    pub fn verified_blob(&self, desc: &Descriptor) -> Result<PathBuf, ImageError> {
        let path = self.blob_path(&desc.digest)?;
        let mut f = std::fs::File::open(&path).map_err(|source| ImageError::MissingBlob {
            digest: desc.digest.clone(),
            path: path.clone(),
            source,
        })?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size: u64 = 0;
        loop {
            let n = f.read(&mut buf).map_err(|source| ImageError::Read {
                path: path.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != desc.digest {
            return Err(ImageError::DigestMismatch {
                digest: desc.digest.clone(),
                actual,
            });
        }
        if desc.size >= 0 && desc.size as u64 != size && desc.size != 0 {
            return Err(ImageError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: size,
            });
        }
        Ok(path)
    }

    /// Reads a small JSON blob (manifest, config) after checking its digest.
    pub fn json_blob<T: serde::de::DeserializeOwned>(
        &self,
        desc: &Descriptor,
        what: &str,
    ) -> Result<T, ImageError> {
        let path = self.verified_blob(desc)?;
        let text = std::fs::read(&path).map_err(|source| ImageError::Read { path, source })?;
        serde_json::from_slice(&text).map_err(|e| ImageError::BadJson {
            what: format!("{what} {}", desc.digest),
            message: e.to_string(),
        })
    }
}

/// Picks the manifest named `tag`, or the only one when no tag is asked for.
pub fn pick_manifest<'a>(
    index: &'a Index,
    tag: Option<&str>,
) -> Result<&'a Descriptor, ImageError> {
    let tags = || {
        index
            .manifests
            .iter()
            .filter_map(|m| m.annotations.get(REF_NAME).cloned())
            .collect::<Vec<_>>()
    };
    match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(t))
            .ok_or_else(|| ImageError::NoSuchTag {
                tag: t.to_string(),
                tags: tags(),
            }),
        None => match index.manifests.as_slice() {
            [only] => Ok(only),
            [] => Err(ImageError::NoManifest),
            _ => index
                .manifests
                .iter()
                .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some("latest"))
                .ok_or(ImageError::AmbiguousManifest { tags: tags() }),
        },
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
