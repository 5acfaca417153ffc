//! COM1: vm-superio's 8250 UART, output to the console file, interrupts through an
//! irqfd on IRQ 4, input pushed in by the event loop.

use std::io::{self, Write};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

pub const COM1_PORT_BASE: u16 = 0x3f8;
pub const COM1_PORT_LEN: u16 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises the serial interrupt (an irqfd).
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the event loop the guest drained the input FIFO (so it reads input again).
pub struct InputDrained(pub EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

/// Console output with a size limit: past `limit` bytes the guest's output is
/// dropped after one note, so a guest printing forever cannot fill the host's disk.
pub struct LimitedWriter<W: Write> {
    inner: W,
    limit: u64,
    written: u64,
    noted: bool,
}

impl<W: Write> LimitedWriter<W> {
    /// `limit` 0 means no limit.
    pub fn new(inner: W, limit: u64) -> Self {
        LimitedWriter {
            inner,
            limit,
            written: 0,
            noted: false,
        }
    }
}

impl<W: Write> Write for LimitedWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.limit == 0 {
            return self.inner.write(b);
        }
        let room = self.limit.saturating_sub(self.written);
        if room == 0 {
            if !self.noted {
                self.noted = true;
                let _ = self
                    .inner
                    .write_all(b"\n[hull-vmm: console limit reached; further output dropped]\n");
                tracing::warn!(limit = self.limit, "guest console limit reached");
            }
            // Report the bytes as taken: the UART must not stall on a full log.
            return Ok(b.len());
        }
        let n = (b.len() as u64).min(room) as usize;
        let w = self.inner.write(&b[..n])?;
        self.written += w as u64;
        Ok(w)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct SerialDevice {
    uart: Serial<IrqLine, InputDrained, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// `irq` is registered as irqfd for [`COM1_IRQ`]; `drained` is watched by the loop.
    pub fn new(irq: EventFd, drained: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::with_events(IrqLine(irq), InputDrained(drained), out),
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_space(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues console input for the guest; returns how many bytes were taken.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!("serial input: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(offset, *byte) {
                tracing::warn!("serial output: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_output_stops_at_the_limit_without_stalling() {
        let mut w = LimitedWriter::new(Vec::new(), 10);
        assert_eq!(w.write(b"0123456").ok(), Some(7));
        assert_eq!(w.write(b"789abc").ok(), Some(3));
        assert_eq!(w.write(b"more").ok(), Some(4));
        assert_eq!(w.write(b"again").ok(), Some(5));
        let text = String::from_utf8_lossy(&w.inner).to_string();
        assert!(
            text.starts_with("0123456789\n[hull-vmm: console limit reached"),
            "{text}"
        );
        assert_eq!(text.matches("limit reached").count(), 1);
        let mut unlimited = LimitedWriter::new(Vec::new(), 0);
        assert_eq!(unlimited.write(&[b'x'; 100]).ok(), Some(100));
    }
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_input_and_interrupts() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            drained.try_clone().unwrap(),
            Box::new(sink.clone()),
        );
        for b in b"hi" {
            dev.write(0, &[*b]);
        }
        dev.write(0, b"xy"); // wide access: ignored
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");

        dev.write(1, &[0x01]); // IER: received-data interrupt
        assert_eq!(dev.push_input(b"ok"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1);
        let mut rx = [0u8];
        dev.read(0, &mut rx);
        assert_eq!(rx[0], b'o');
        dev.read(0, &mut rx);
        assert_eq!(rx[0], b'k');
        assert_eq!(drained.read().unwrap(), 1);
        let big = [b'a'; 200];
        assert_eq!(dev.push_input(&big), 64);
        assert_eq!(dev.input_space(), 0);
    }
}
