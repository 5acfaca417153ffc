//! An address bus (I/O ports or MMIO): ranges mapped to devices. The guest is hostile:
//! an access is dispatched only when it lies wholly inside one device's range;
//! anything else reads as all ones and writes are dropped.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// A device model on a bus. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Immutable once the VM runs; shared by all vCPU threads.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `[base, base + len)`; ranges may not overlap.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) -> Result<()> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(|| Error::Config(format!("bad bus range {base:#x}+{len:#x}")))?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(Error::Config(format!(
                "bus range {base:#x}..{end:#x} overlaps another device"
            )));
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let idx = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let entry = &self.entries[idx];
        let offset = addr - entry.base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then_some((entry, offset))
    }

    /// Guest read; returns false (and fills with 0xff) when nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                let mut dev = entry.device.lock().unwrap_or_else(|p| p.into_inner());
                dev.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Guest write; returns false when nothing is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                let mut dev = entry.device.lock().unwrap_or_else(|p| p.into_inner());
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_bounds_and_overlaps() {
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert!(bus.insert(0x3ff, 2, dev.clone()).is_err());
        assert!(bus.insert(0x3f0, 9, dev.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        assert!(bus.insert(0x400, 0, dev.clone()).is_err());
        bus.insert(0x3f0, 8, dev.clone()).unwrap();

        assert!(bus.write(0x3f9, &[7]));
        let mut b = [0u8; 2];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5, 5]);
        // Straddling the end of a device, or unmapped: all ones, writes dropped.
        let mut b = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!bus.write(0x3ff, &[1, 2]));
        assert!(!bus.write(0x10, &[1]));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        assert_eq!(dev.lock().unwrap().0, vec![(1, vec![7])]);
    }
}
