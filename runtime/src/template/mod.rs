//! VM templates (hull-vmm): a VM booted to "agent ready, no containers" and
//! snapshotted, from which sandboxes start instead of booting a kernel.
//!
//! A template is made for one [`TemplateKey`]: the kernel, initramfs and hull-vmm
//! binary (by identity: path, size, mtime, inode), the command line, the VM's size
//! and device shape (share, scratch disk and its size, network interfaces), and the
//! agent policy file's digest. A sandbox whose key has a template restores from it;
//! the first sandbox of a new key builds it ("on first need"), or `hull template build`
//! does ahead of time. Anything that goes wrong (no template, a build or a restore that
//! fails) is logged and the sandbox boots cold.
//!
//! On disk, in `[template] dir` (default `<cache dir>/templates`), per key digest D:
//! - `D/`: hull-vmm's snapshot (`state.json`, `memory`), root-owned, 0600;
//! - `D.json`: the key and when the template was made, written last: a template
//!   without it is incomplete and never used;
//! - `D.lock`: held while D is built, so concurrent first needs build once.
//!
//! A template is built unjailed (nothing of a tenant runs in it: the guest kernel and
//! the agent, before any CreateSandbox); sandboxes restored from it run jailed as any
//! other, with the snapshot's files passed open to hull-vmm.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::hypervisor::{self, BackendKind, SnapshotFiles};
use crate::sandbox::{Sandbox, SandboxError, SandboxSpec};

/// Bumped when what a template holds changes meaning (the key's fields, the
/// restore protocol with the agent).
pub const TEMPLATE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("templates need the hull-vmm backend; this config runs {0}")]
    Backend(String),
    #[error("templates do not cover VMs with network interfaces yet ({0} asked for)")]
    Network(usize),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no template {0}")]
    NotFound(String),
    #[error("booting the template VM: {0}")]
    Boot(#[from] SandboxError),
    #[error("snapshotting the template VM: {0}")]
    Snapshot(#[from] hypervisor::HypervisorError),
    #[error("choosing the backend: {0}")]
    Select(#[from] hypervisor::SelectError),
}

fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> TemplateError + 'a {
    move |source| TemplateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A file by identity: a rebuilt kernel or initramfs (new mtime or inode) is another
/// file, and so another template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub len: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> Result<FileIdentity, TemplateError> {
        let meta = std::fs::metadata(path).map_err(io_error("reading", path))?;
        Ok(FileIdentity {
            path: path.to_path_buf(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        })
    }
}

/// Everything a template VM's state depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateKey {
    pub format: u32,
    pub kernel: FileIdentity,
    pub initrd: FileIdentity,
    pub hull_vmm: FileIdentity,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub share: bool,
    /// The scratch disk's size in MiB, if the VM has one (the guest saw its capacity).
    pub scratch_mib: Option<u64>,
    pub nics: usize,
    /// sha256 of `[policy] file`'s text, empty without one.
    pub policy_sha256: String,
}

impl TemplateKey {
    /// The key of the VM `spec` describes under `config`.
    pub fn new(config: &Config, spec: &SandboxSpec) -> Result<TemplateKey, TemplateError> {
        let hull_vmm = crate::host::find_binary(&config.hypervisor.hull_vmm).ok_or_else(|| {
            TemplateError::Io {
                what: "finding",
                path: config.hypervisor.hull_vmm.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }
        })?;
        let policy_sha256 = match &config.policy.file {
            Some(path) => {
                let text = std::fs::read(path).map_err(io_error("reading", path))?;
                hex(&Sha256::digest(&text))
            }
            None => String::new(),
        };
        Ok(TemplateKey {
            format: TEMPLATE_FORMAT,
            kernel: FileIdentity::of(&spec.kernel)?,
            initrd: FileIdentity::of(&spec.initrd)?,
            hull_vmm: FileIdentity::of(&hull_vmm)?,
            cmdline: spec.cmdline(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            share: spec.share,
            scratch_mib: spec.scratch_disk.then_some(config.rootfs.scratch_size_mib),
            nics: spec.nics.len(),
            policy_sha256,
        })
    }

    /// The key's name on disk: 32 hex digits of the sha256 of its JSON.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&json)[..16])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `D.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub key: TemplateKey,
    /// Unix seconds.
    pub created: u64,
    /// How long the build took (boot to snapshot), seconds.
    pub build_seconds: f64,
}

/// A template as `hull template ls` shows it.
#[derive(Debug, Clone)]
pub struct TemplateInfo {
    pub digest: String,
    pub record: Option<TemplateRecord>,
    /// Bytes the snapshot takes on disk (its memory file is sparse).
    pub disk_bytes: u64,
}

/// The templates directory.
pub struct TemplateStore {
    dir: PathBuf,
}

impl TemplateStore {
    pub fn new(config: &Config) -> TemplateStore {
        TemplateStore {
            dir: config.template_dir(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn snapshot_dir(&self, digest: &str) -> PathBuf {
        self.dir.join(digest)
    }

    fn record_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.json"))
    }

    /// The template of `key`, its files open, if one is complete and was made for
    /// exactly this key.
    pub fn open(&self, key: &TemplateKey) -> Result<Option<SnapshotFiles>, TemplateError> {
        let digest = key.digest();
        let record_path = self.record_path(&digest);
        let text = match std::fs::read(&record_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("reading", &record_path)(e)),
        };
        let record: TemplateRecord = match serde_json::from_slice(&text) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(template = %digest, error = %e, "unreadable template record; rebuilding");
                self.remove(&digest)?;
                return Ok(None);
            }
        };
        if record.key != *key {
            tracing::warn!(template = %digest, "template made for another key; rebuilding");
            self.remove(&digest)?;
            return Ok(None);
        }
        let dir = self.snapshot_dir(&digest);
        let open = |name: &str| {
            let path = dir.join(name);
            std::fs::File::open(&path)
                .map(Arc::new)
                .map_err(io_error("opening", &path))
        };
        let (state, memory) = match (open("state.json"), open("memory")) {
            (Ok(s), Ok(m)) => (s, m),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(template = %digest, error = %e, "template damaged; rebuilding");
                self.remove(&digest)?;
                return Ok(None);
            }
        };
        // What can be checked without hull-vmm (it checks the rest when it restores):
        // a memory file of the VM's size.
        let want = u64::from(key.memory_mib) << 20;
        let len = memory.metadata().map(|m| m.len()).unwrap_or(0);
        if len != want {
            tracing::warn!(
                template = %digest,
                "template damaged: its memory file is {len} bytes, the VM has {want}; rebuilding"
            );
            self.remove(&digest)?;
            return Ok(None);
        }
        Ok(Some(SnapshotFiles { state, memory, dir }))
    }

    /// Every template (complete or not) with what it takes on disk.
    pub fn list(&self) -> Result<Vec<TemplateInfo>, TemplateError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("listing", &self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().is_dir() || name.contains(".partial-") {
                continue;
            }
            let record = std::fs::read(self.record_path(&name))
                .ok()
                .and_then(|t| serde_json::from_slice(&t).ok());
            let disk_bytes = std::fs::read_dir(entry.path())
                .map(|files| {
                    files
                        .flatten()
                        .filter_map(|f| f.metadata().ok())
                        .map(|m| m.blocks() * 512)
                        .sum()
                })
                .unwrap_or(0);
            out.push(TemplateInfo {
                digest: name,
                record,
                disk_bytes,
            });
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Removes template `digest` (record first: a half-removed template is never used).
    pub fn remove(&self, digest: &str) -> Result<(), TemplateError> {
        if digest.is_empty() || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(TemplateError::NotFound(digest.to_string()));
        }
        let record = self.record_path(digest);
        let dir = self.snapshot_dir(digest);
        if !record.exists() && !dir.exists() {
            return Err(TemplateError::NotFound(digest.to_string()));
        }
        match std::fs::remove_file(&record) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("removing", &record)(e)),
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing", &dir)(e)),
        }
    }

    /// Partial snapshots a killed build left (`D.partial-<pid>`).
    fn remove_partials(&self, digest: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{digest}.partial-");
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Checks that `config` and `spec` can have a template at all.
fn check_templatable(config: &Config, spec: &SandboxSpec) -> Result<(), TemplateError> {
    let host = ::hull_vmm::host_support();
    let hv = &config.hypervisor;
    let found = crate::host::find_binary(&hv.hull_vmm).is_some();
    let plan = hypervisor::plan(hv.backend, &host, (&hv.hull_vmm, found))?;
    if plan.kind != BackendKind::HullVmm {
        return Err(TemplateError::Backend(plan.kind.name().to_string()));
    }
    if !spec.nics.is_empty() {
        return Err(TemplateError::Network(spec.nics.len()));
    }
    Ok(())
}

/// Builds the template of `spec`'s key unless it exists; returns its digest. Boots the
/// VM unjailed, waits for its agent, snapshots it and stops it.
pub async fn build(config: &Config, spec: &SandboxSpec) -> Result<String, TemplateError> {
    check_templatable(config, spec)?;
    let key = TemplateKey::new(config, spec)?;
    let store = TemplateStore::new(config);
    let digest = key.digest();
    std::fs::create_dir_all(&store.dir).map_err(io_error("creating", &store.dir))?;
    let lock_path = store.dir.join(format!("{digest}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("opening", &lock_path))?;
    // Blocks while another process builds this template (the build has deadlines).
    let _held = tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))
    })
    .await
    .map_err(|e| io_error("locking", &lock_path)(std::io::Error::other(e)))?
    .map_err(io_error("locking", &lock_path))?;
    if store.open(&key)?.is_some() {
        return Ok(digest);
    }
    store.remove_partials(&digest);
    let _ = store.remove(&digest);

    let started = std::time::Instant::now();
    let mut template_config = config.clone();
    template_config.jail.enabled = false;
    let mut template_spec = spec.clone();
    template_spec.id = Some(format!("template-{}", &digest[..12]));
    template_spec.keep_state = false;
    template_spec.restore = None;
    let backend = hypervisor::select(&template_config)?;
    let mut sandbox = Sandbox::create(&template_config, &template_spec, backend)?;
    let snapshot = async {
        sandbox.start(&template_config, &template_spec).await?;
        // Every clone then finds the default seccomp profile compiled.
        sandbox.prepare_guest_caches().await;
        sandbox.snapshot_vm(&store.snapshot_dir(&digest)).await?;
        Ok::<_, TemplateError>(())
    }
    .await;
    // Paused: the agent cannot answer a DestroySandbox; its processes just stop.
    sandbox.teardown().await;
    drop(sandbox);
    snapshot?;
    let record = TemplateRecord {
        key,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
    let record_path = store.record_path(&digest);
    crate::atomic_write::write_atomically(&record_path, &json, 0o600)
        .map_err(io_error("writing", &record_path))?;
    tracing::info!(template = %digest, seconds = record.build_seconds, "template built");
    Ok(digest)
}

/// What a sandbox about to boot restores from: the template of its key (built now
/// if missing), or `None` (templates off, not possible for this VM, or any failure,
/// which is logged: the sandbox then boots cold).
pub async fn for_sandbox(config: &Config, spec: &SandboxSpec) -> Option<SnapshotFiles> {
    if !config.template.enabled {
        return None;
    }
    let found = async {
        check_templatable(config, spec)?;
        let key = TemplateKey::new(config, spec)?;
        let store = TemplateStore::new(config);
        if let Some(files) = store.open(&key)? {
            return Ok(files);
        }
        tracing::info!(template = %key.digest(), "no template for this VM yet: building it");
        build(config, spec).await?;
        store
            .open(&key)?
            .ok_or_else(|| TemplateError::NotFound(key.digest()))
    };
    match found.await {
        Ok(files) => Some(files),
        Err(e) => {
            tracing::warn!(error = %e, "no template for this sandbox; booting cold");
            None
        }
    }
}

#[cfg(test)]
mod tests;
