//! The snapshot format: a directory with `state.json` (every vCPU, the VM's interrupt
//! controllers and clock, each device's state, and the description of the VM it was
//! taken from) and `memory` (guest RAM, sparse: pages that were zero are holes).
//!
//! A snapshot is written into a `<dir>.partial-<pid>` directory and renamed into place
//! only when complete, so a crash never leaves a half snapshot under the final name.
//! Loading checks the format name and version, that the memory file has exactly the
//! size the state gives, and that both files are the caller's and private (0600): a
//! template is shared by tenants' VMs, so nobody else may have been able to change it.
//! What the state holds is checked again where it is used, as guest input is.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::config::VmConfig;
use crate::devices::legacy::SerialSnapshot;
use crate::devices::virtio::mmio::TransportState;
use crate::error::{Error, Result};
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

/// What `state.json` says it is.
pub const FORMAT_NAME: &str = "hull-vmm-snapshot";
/// Bumped whenever the state's meaning changes; another version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state.json";
/// The guest memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// A state file larger than this is not one hull-vmm wrote.
const MAX_STATE_BYTES: u64 = 64 << 20;
/// Memory is read in chunks of this size.
const CHUNK: usize = 1 << 20;
/// ... and written a page at a time: an all-zero page stays a hole (a guest's memory
/// is mostly holes, and every page written is a page each restore copies).
const PAGE: usize = 4096;

/// Everything but guest memory.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    pub format: String,
    pub version: u32,
    /// The VM as it was built: its shape (vCPUs, memory, devices) must match the
    /// description a restore is given.
    pub config: VmConfig,
    /// Bytes of guest RAM, the size of the memory file.
    pub memory_bytes: u64,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: Option<SerialSnapshot>,
    /// One per virtio-mmio slot, in slot order.
    pub virtio: Vec<TransportState>,
}

fn snapshot_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Snapshot {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Copies guest RAM into `file` (already sized to the RAM): region after region, in
/// the order and at the offsets a shared memfd holds them. Blocks that are all zero
/// are skipped and stay holes. Call it with the vCPUs paused and no device working.
pub fn write_memory(mem: &GuestMemoryMmap, file: &File) -> std::io::Result<u64> {
    let mut chunk = vec![0u8; CHUNK];
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = CHUNK.min((len - done) as usize);
            let buf = &mut chunk[..n];
            mem.read_slice(buf, region.start_addr().unchecked_add(done))
                .map_err(|e| std::io::Error::other(format!("reading guest memory: {e}")))?;
            // Runs of non-zero pages, each written with one call.
            let mut page = 0;
            while page < n {
                let is_data = |p: usize| buf[p..(p + PAGE).min(n)].iter().any(|&b| b != 0);
                if !is_data(page) {
                    page += PAGE;
                    continue;
                }
                let start = page;
                while page < n && is_data(page) {
                    page += PAGE;
                }
                let end = page.min(n);
                file.write_all_at(&buf[start..end], offset + done + start as u64)?;
            }
            done += n as u64;
        }
        offset += len;
    }
    Ok(offset)
}

/// A snapshot being written: the partial directory and its memory file. Dropped
/// without [`PendingSnapshot::commit`], it removes the partial directory.
pub struct PendingSnapshot {
    final_dir: PathBuf,
    partial_dir: PathBuf,
    pub memory: File,
    committed: bool,
}

impl PendingSnapshot {
    /// Creates `<dir>.partial-<pid>` (0700) with an empty memory file (0600) of
    /// `memory_bytes`. `dir` must not exist yet.
    pub fn create(dir: &Path, memory_bytes: u64) -> Result<Self> {
        if dir.exists() {
            return Err(snapshot_error(dir, "already exists; remove it first"));
        }
        let name = dir
            .file_name()
            .ok_or_else(|| snapshot_error(dir, "is not a directory name"))?;
        let mut partial_name = name.to_os_string();
        partial_name.push(format!(".partial-{}", std::process::id()));
        let partial_dir = dir.with_file_name(partial_name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&partial_dir)
            .map_err(Error::file(&partial_dir))?;
        let path = partial_dir.join(MEMORY_FILE);
        let memory = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|f| f.set_len(memory_bytes).map(|()| f));
        match memory {
            Ok(memory) => Ok(PendingSnapshot {
                final_dir: dir.to_path_buf(),
                partial_dir,
                memory,
                committed: false,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial_dir);
                Err(Error::File { path, source: e })
            }
        }
    }

    /// Writes the state, syncs both files and renames the directory into place.
    pub fn commit(mut self, state: &SnapshotState) -> Result<()> {
        let path = self.partial_dir.join(STATE_FILE);
        let text = serde_json::to_vec(state)
            .map_err(|e| snapshot_error(&self.final_dir, format!("encoding the state: {e}")))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::file(&path))?;
        file.write_all(&text).map_err(Error::file(&path))?;
        file.sync_all().map_err(Error::file(&path))?;
        let memory_path = self.partial_dir.join(MEMORY_FILE);
        self.memory.sync_all().map_err(Error::file(&memory_path))?;
        std::fs::rename(&self.partial_dir, &self.final_dir)
            .map_err(Error::file(&self.final_dir))?;
        self.committed = true;
        if let Some(parent) = self.final_dir.parent() {
            // The rename is durable once the parent directory is.
            if let Ok(d) = File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.partial_dir);
        }
    }
}

/// A snapshot directory, checked and opened.
pub struct LoadedSnapshot {
    pub dir: PathBuf,
    pub state: SnapshotState,
    pub memory: File,
}

/// Refuses a file that is not a regular file of this user (or of root, who made a
/// template a jailed hull-vmm is handed) with no access for anyone else.
fn check_private(dir: &Path, path: &Path, file: &File) -> Result<std::fs::Metadata> {
    let meta = file.metadata().map_err(Error::file(path))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if !meta.is_file() {
        return Err(snapshot_error(dir, format!("{name} is not a regular file")));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(snapshot_error(
            dir,
            format!(
                "{name} is owned by uid {}, neither {euid} nor root",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(snapshot_error(
            dir,
            format!(
                "{name} has mode {:o}; a snapshot's files must be 0600",
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(meta)
}

/// Opens and checks the snapshot in `dir`.
pub fn load(dir: &Path) -> Result<LoadedSnapshot> {
    let state_path = dir.join(STATE_FILE);
    let state = File::open(&state_path).map_err(|e| {
        snapshot_error(
            dir,
            format!("{STATE_FILE}: {e} (not a snapshot directory?)"),
        )
    })?;
    let memory_path = dir.join(MEMORY_FILE);
    let memory =
        File::open(&memory_path).map_err(|e| snapshot_error(dir, format!("{MEMORY_FILE}: {e}")))?;
    load_files(dir, state, memory)
}

/// Checks a snapshot whose two files someone else opened (a jailed hull-vmm cannot
/// open a root-owned template; the runtime passes it the files). `dir` names the
/// snapshot in messages.
pub fn load_files(dir: &Path, file: File, memory: File) -> Result<LoadedSnapshot> {
    let state_path = dir.join(STATE_FILE);
    let meta = check_private(dir, &state_path, &file)?;
    if meta.len() > MAX_STATE_BYTES {
        return Err(snapshot_error(
            dir,
            format!("{STATE_FILE} is {} bytes, too large", meta.len()),
        ));
    }
    let mut text = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_STATE_BYTES)
        .read_to_end(&mut text)
        .map_err(Error::file(&state_path))?;
    // The name and version first, so that another format is named as such rather
    // than reported as a parse error deep inside it.
    #[derive(Deserialize)]
    struct Header {
        format: String,
        version: u32,
    }
    let header: Header = serde_json::from_slice(&text)
        .map_err(|e| snapshot_error(dir, format!("{STATE_FILE} is corrupt or truncated: {e}")))?;
    if header.format != FORMAT_NAME {
        return Err(snapshot_error(
            dir,
            format!("format {:?}, expected {FORMAT_NAME:?}", header.format),
        ));
    }
    if header.version != FORMAT_VERSION {
        return Err(snapshot_error(
            dir,
            format!(
                "format version {}, this hull-vmm reads {FORMAT_VERSION}; take the snapshot again",
                header.version
            ),
        ));
    }
    let state: SnapshotState = serde_json::from_slice(&text)
        .map_err(|e| snapshot_error(dir, format!("{STATE_FILE} is corrupt or truncated: {e}")))?;

    let memory_path = dir.join(MEMORY_FILE);
    let meta = check_private(dir, &memory_path, &memory)?;
    if meta.len() != state.memory_bytes {
        return Err(snapshot_error(
            dir,
            format!(
                "{MEMORY_FILE} is {} bytes, the state says {} (truncated?)",
                meta.len(),
                state.memory_bytes
            ),
        ));
    }
    if state.memory_bytes != state.config.mem_bytes() {
        return Err(snapshot_error(
            dir,
            format!(
                "{} bytes of memory for a VM of {} MiB",
                state.memory_bytes, state.config.mem_mib
            ),
        ));
    }
    if state.vcpus.len() != usize::from(state.config.vcpus) {
        return Err(snapshot_error(
            dir,
            format!(
                "{} vCPU states for a VM of {} vCPUs",
                state.vcpus.len(),
                state.config.vcpus
            ),
        ));
    }
    Ok(LoadedSnapshot {
        dir: dir.to_path_buf(),
        state,
        memory,
    })
}

impl LoadedSnapshot {
    /// Checks that `config` (the restored VM's host side: console, sockets, disks,
    /// taps) describes the VM the snapshot was taken of: same vCPUs, memory and
    /// devices in the same slots. The guest already knows all of these.
    pub fn check_matches(&self, config: &VmConfig) -> Result<()> {
        let was = &self.state.config;
        let mismatch = |what: &str, was: String, now: String| {
            Err(snapshot_error(
                &self.dir,
                format!("taken with {what} {was}, restored with {now}"),
            ))
        };
        if was.vcpus != config.vcpus {
            return mismatch("vcpus", was.vcpus.to_string(), config.vcpus.to_string());
        }
        if was.mem_mib != config.mem_mib {
            return mismatch(
                "mem_mib",
                was.mem_mib.to_string(),
                config.mem_mib.to_string(),
            );
        }
        if was.devices != config.devices {
            return mismatch(
                "legacy devices",
                format!("{:?}", was.devices),
                format!("{:?}", config.devices),
            );
        }
        let disks = |c: &VmConfig| -> Vec<bool> { c.block.iter().map(|b| b.read_only).collect() };
        if disks(was) != disks(config) {
            return mismatch(
                "disks (read-only flags)",
                format!("{:?}", disks(was)),
                format!("{:?}", disks(config)),
            );
        }
        if was.net.len() != config.net.len() {
            return mismatch(
                "network interfaces",
                was.net.len().to_string(),
                config.net.len().to_string(),
            );
        }
        let tag = |c: &VmConfig| c.fs.as_ref().map(|f| f.tag.clone());
        if tag(was) != tag(config) {
            return mismatch(
                "virtio-fs tag",
                format!("{:?}", tag(was)),
                format!("{:?}", tag(config)),
            );
        }
        let cid = |c: &VmConfig| c.vsock.as_ref().map(|v| v.guest_cid);
        if cid(was) != cid(config) {
            return mismatch(
                "vsock guest CID",
                format!("{:?}", cid(was)),
                format!("{:?}", cid(config)),
            );
        }
        if was.shared_memory != config.shared_memory && config.fs.is_some() {
            return mismatch(
                "shared_memory",
                was.shared_memory.to_string(),
                config.shared_memory.to_string(),
            );
        }
        if self.state.virtio.len() != config.virtio_device_count() {
            return Err(snapshot_error(
                &self.dir,
                format!(
                    "{} virtio device states for {} devices",
                    self.state.virtio.len(),
                    config.virtio_device_count()
                ),
            ));
        }
        if self.state.serial.is_some() != config.devices.serial {
            return Err(snapshot_error(
                &self.dir,
                "serial state and serial device disagree",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    /// Pages that are zero stay holes; the rest land at their offsets, byte for byte.
    #[test]
    fn memory_is_written_sparse_a_page_at_a_time() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 * PAGE)]).unwrap();
        mem.write_slice(&[7u8; 10], GuestAddress(3)).unwrap();
        mem.write_slice(&[9u8; PAGE], GuestAddress(40 * PAGE as u64))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("memory"))
            .unwrap();
        file.set_len(64 * PAGE as u64).unwrap();
        assert_eq!(write_memory(&mem, &file).unwrap(), 64 * PAGE as u64);
        let mut back = vec![0u8; 64 * PAGE];
        file.read_exact_at(&mut back, 0).unwrap();
        let mut want = vec![0u8; 64 * PAGE];
        mem.read_slice(&mut want, GuestAddress(0)).unwrap();
        assert_eq!(back, want);
        // Two pages of data: the file holds (about) two pages, not 64.
        let blocks = file.metadata().unwrap().blocks() * 512;
        assert!(blocks <= 4 * PAGE as u64, "{blocks} bytes allocated");
    }
}
