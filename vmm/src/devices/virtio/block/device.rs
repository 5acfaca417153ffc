//! The virtio-blk device: one request queue, served synchronously on the event loop.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::request::{handle, Disk, SECTOR_SIZE};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, IrqTrigger, QueuePosition, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};

const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// How to open a disk.
#[derive(Debug, Clone)]
pub struct BlockOptions {
    pub read_only: bool,
    /// Offer no FLUSH: the disk's contents die with the VM.
    pub volatile: bool,
    /// Serial reported by GET_ID (at most 20 bytes are used).
    pub id: String,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<IrqTrigger>,
}

pub struct Block {
    file: File,
    capacity: u64,
    options: BlockOptions,
    config: [u8; 24],
    active: Option<Active>,
}

impl Block {
    pub fn open(path: &Path, options: BlockOptions) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .open(path)
            .map_err(Error::file(path))?;
        let len = file.metadata().map_err(Error::file(path))?.len();
        Ok(Self::from_file(file, len / SECTOR_SIZE, options))
    }

    /// A device over a duplicate of the inherited fd `fd` (the caller keeps its own).
    pub fn from_inherited_fd(fd: i32, options: BlockOptions) -> Result<Self> {
        let named = Path::new("inherited block fd");
        let file = crate::host::inherited_file(fd, "inherited block fd")?;
        let meta = file.metadata().map_err(Error::file(named))?;
        if !meta.is_file() {
            return Err(Error::Config(format!(
                "block fd {fd} is not a regular file"
            )));
        }
        Ok(Self::from_file(file, meta.len() / SECTOR_SIZE, options))
    }

    /// A device over an open file of `capacity` sectors.
    pub fn from_file(file: File, capacity: u64, options: BlockOptions) -> Self {
        // virtio_blk_config: capacity u64, size_max u32, seg_max u32, geometry u32,
        // blk_size u32.
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Block {
            file,
            capacity,
            options,
            config,
            active: None,
        }
    }

    fn serve(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let disk = Disk {
            file: &self.file,
            capacity: self.capacity,
            read_only: self.options.read_only,
            id: self.options.id.as_bytes(),
        };
        let mut used_any = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            // The chain stops by itself after queue-size descriptors (loops) and at a
            // descriptor index outside the table.
            let descs: Vec<Descriptor> = chain.collect();
            let used_len = match handle(&active.mem, &descs, &disk) {
                Some(done) => {
                    if let Err(e) = &done.result {
                        tracing::debug!("virtio-blk: request refused: {e}");
                    }
                    done.used_len
                }
                None => {
                    tracing::debug!("virtio-blk: request without status byte dropped");
                    0
                }
            };
            if let Err(e) = active.queue.add_used(&active.mem, head, used_len) {
                tracing::debug!("virtio-blk: add_used: {e:?}");
            }
            used_any = true;
        }
        if used_any && active.queue.needs_notification(&active.mem).unwrap_or(true) {
            active.irq.signal_used();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_SEG_MAX;
        if !self.options.volatile {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if self.options.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> std::result::Result<(), ActivateError> {
        let queue = a
            .queues
            .into_iter()
            .next()
            .ok_or(ActivateError::QueueNotReady(0))?;
        self.active = Some(Active {
            mem: a.mem,
            queue,
            irq: a.irq,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_positions(&self) -> std::result::Result<Vec<QueuePosition>, String> {
        Ok(self
            .active
            .iter()
            .map(|a| QueuePosition::of(&a.queue))
            .collect())
    }

    fn process_queue(&mut self, index: usize) {
        if index == 0 {
            self.serve();
        }
    }
}
