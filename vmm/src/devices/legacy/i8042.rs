//! The i8042 keyboard controller, only for its CPU-reset command: 0xFE written to port
//! 0x64 ends the VM as a reset request (how Linux's `reboot=k` restarts).

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::control::Control;
use crate::exit::{ExitReason, ResetCause};

/// Ports 0x60 (data) .. 0x64 (command/status).
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_LEN: u16 = 5;

/// Turns the model's reset line into a VM exit.
pub struct ResetLine(Arc<Control>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.finish(Ok(ExitReason::Reset(ResetCause::I8042)));
        Ok(())
    }
}

pub struct I8042 {
    model: I8042Device<ResetLine>,
}

impl I8042 {
    pub fn new(control: Arc<Control>) -> Self {
        I8042 {
            model: I8042Device::new(ResetLine(control)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.model.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // The trigger is infallible.
            let _ = self.model.write(offset, *byte);
        }
    }
}
