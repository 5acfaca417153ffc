//! A test device like QEMU's `isa-debug-exit`: a byte written to its port ends the VM
//! with [`ExitReason::DebugExit`] (process status `(v << 1) | 1`).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::control::Control;
use crate::exit::ExitReason;

/// Its I/O port (QEMU's default `iobase`).
pub const DEBUG_EXIT_PORT: u16 = 0x501;

pub struct DebugExit {
    control: Arc<Control>,
}

impl DebugExit {
    pub fn new(control: Arc<Control>) -> Self {
        DebugExit { control }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(v) = data.first() {
            self.control.finish(Ok(ExitReason::DebugExit(*v)));
        }
    }
}
