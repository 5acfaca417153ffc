//! Legacy PC devices on the I/O port bus.

mod debug_exit;
mod i8042;
mod serial;

pub use debug_exit::{DebugExit, DEBUG_EXIT_PORT};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{
    ConsoleBuffer, LimitedWriter, SerialDevice, SerialSnapshot, COM1_IRQ, COM1_PORT_BASE,
    COM1_PORT_LEN, CONSOLE_FLUSH_DELAY,
};
