//! COM1: vm-superio's 8250 UART, output to the console file a line at a time
//! ([`ConsoleBuffer`]), interrupts through an irqfd on IRQ 4, input pushed in by the
//! event loop.

use std::io::{self, Write};
use std::time::Duration;

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

/// How long an unfinished line may wait in [`ConsoleBuffer`] before it goes out anyway
/// (the event loop writes it: a prompt, the last words before a hang).
pub const CONSOLE_FLUSH_DELAY: Duration = Duration::from_millis(50);
/// Pending console bytes that go out even without a newline.
const CONSOLE_BUFFER_MAX: usize = 4096;

/// The guest's console output, passed on a line at a time.
///
/// The UART hands over one byte per guest port write (one VM exit each). Writing each
/// byte on at once costs a write(2) and a wakeup of whoever reads the console (hull's
/// console pump) per byte, which is most of what a verbose boot costs under nested
/// virtualization. Bytes go on at a newline, at [`CONSOLE_BUFFER_MAX`], when the event
/// loop flushes an unfinished line [`CONSOLE_FLUSH_DELAY`] after `waker` told it one
/// waits (at most one wakeup per delay), and when the VM ends (or this is dropped).
pub struct ConsoleBuffer {
    out: Box<dyn Write + Send>,
    pending: Vec<u8>,
    /// Tells the event loop an unfinished line waits.
    waker: Option<EventFd>,
    /// The event loop was told and has not flushed yet.
    told: bool,
}

impl ConsoleBuffer {
    /// `waker` (an eventfd the event loop watches) may be `None` when nothing flushes
    /// unfinished lines on a timer (they then go out at the limit or at the end).
    pub fn new(out: Box<dyn Write + Send>, waker: Option<EventFd>) -> Self {
        ConsoleBuffer {
            out,
            pending: Vec::with_capacity(256),
            waker,
            told: false,
        }
    }

    /// Writes out everything pending: the event loop's flush (it may be told again).
    pub fn flush_pending(&mut self) -> io::Result<()> {
        self.told = false;
        self.write_out()
    }

    /// Writes out everything pending (the bytes are dropped if that fails).
    fn write_out(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let res = self
            .out
            .write_all(&self.pending)
            .and_then(|()| self.out.flush());
        self.pending.clear();
        res
    }

    fn tell_event_loop(&mut self) {
        if self.told {
            return;
        }
        if let Some(waker) = &self.waker {
            match waker.write(1) {
                Ok(()) => self.told = true,
                Err(e) => tracing::warn!("console flush wakeup: {e}"),
            }
        }
    }
}

impl Write for ConsoleBuffer {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(b);
        if b.contains(&b'\n') || self.pending.len() >= CONSOLE_BUFFER_MAX {
            // Whether or not it was told, the event loop flushes once its delay is up:
            // `told` stays, so a line-by-line stream wakes it once per delay at most.
            self.write_out()?;
        } else {
            self.tell_event_loop();
        }
        Ok(b.len())
    }

    /// Does nothing: the UART flushes after every byte, which is what this type exists
    /// to avoid. [`ConsoleBuffer::flush_pending`] writes out.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleBuffer {
    fn drop(&mut self) {
        if let Err(e) = self.flush_pending() {
            tracing::warn!("console output at the end: {e}");
        }
    }
}

pub struct SerialDevice {
    uart: Serial<IrqLine, InputDrained, ConsoleBuffer>,
}

/// The UART's registers and receive FIFO, for a snapshot (vm-superio's `SerialState`,
/// which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    /// `irq` is registered as irqfd for [`COM1_IRQ`]; `drained` is watched by the loop.
    pub fn new(irq: EventFd, drained: EventFd, out: ConsoleBuffer) -> Self {
        SerialDevice {
            uart: Serial::with_events(IrqLine(irq), InputDrained(drained), out),
        }
    }

    /// A UART in a snapshot's state; a receive FIFO longer than the UART's is refused.
    pub fn restore(
        irq: EventFd,
        drained: EventFd,
        out: ConsoleBuffer,
        saved: &SerialSnapshot,
    ) -> Result<Self, String> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, IrqLine(irq), InputDrained(drained), out)
            .map_err(|e| format!("serial state: {e:?}"))?;
        Ok(SerialDevice { uart })
    }

    /// The UART's state for a snapshot.
    pub fn save_state(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Writes out the console output still buffered (an unfinished line).
    pub fn flush_output(&mut self) {
        if let Err(e) = self.uart.writer_mut().flush_pending() {
            tracing::warn!("serial output: {e}");
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
    fn console_output_goes_on_by_line_and_when_flushed() {
        let sink = Sink::default();
        let out = |sink: &Sink| String::from_utf8_lossy(&sink.0.lock().unwrap()).to_string();
        let waker = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut buf = ConsoleBuffer::new(Box::new(sink.clone()), Some(waker.try_clone().unwrap()));
        for b in b"boot" {
            assert_eq!(buf.write(&[*b]).ok(), Some(1));
            assert!(buf.flush().is_ok()); // the UART's flush after each byte: no output
        }
        assert_eq!(out(&sink), "");
        // One wakeup for the unfinished line, however many bytes follow.
        assert_eq!(waker.read().ok(), Some(1));
        for b in b"ed\nnext" {
            buf.write_all(&[*b]).unwrap();
        }
        assert_eq!(out(&sink), "booted\n");
        assert!(waker.read().is_err(), "woken again before the loop flushed");
        // The event loop's flush: the unfinished line goes out, the next one wakes it.
        buf.flush_pending().unwrap();
        assert_eq!(out(&sink), "booted\nnext");
        buf.write_all(b"$ ").unwrap();
        assert_eq!(waker.read().ok(), Some(1));
        // A long line without a newline goes out at the limit; the rest at the end.
        buf.write_all(&[b'.'; CONSOLE_BUFFER_MAX]).unwrap();
        assert_eq!(
            out(&sink).len(),
            "booted\nnext$ ".len() + CONSOLE_BUFFER_MAX
        );
        buf.write_all(b"last words").unwrap();
        drop(buf);
        assert!(out(&sink).ends_with(".last words"));
    }

    #[test]
    fn output_input_and_interrupts() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            drained.try_clone().unwrap(),
            ConsoleBuffer::new(Box::new(sink.clone()), None),
        );
        for b in b"hi" {
            dev.write(0, &[*b]);
        }
        dev.write(0, b"xy"); // wide access: ignored
        dev.flush_output(); // an unfinished line
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
