//! The VMM's own thread: an epoll loop (event-manager) serving host-side events while
//! vCPU threads run the guest. Subscribers: the control mailbox (stop/pause/resume and
//! "the VM is ending"), the serial console input, the serial console's "an unfinished
//! line waits" (written out by the loop after [`CONSOLE_FLUSH_DELAY`]), and virtio
//! devices (queue notifications and host-side backends).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use crate::control::Control;
use crate::devices::legacy::{SerialDevice, CONSOLE_FLUSH_DELAY};
use crate::devices::virtio::event_handler::VirtioEvents;
use crate::error::{Error, Result};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Drains the control eventfd; the loop's owner then looks at the mailbox.
struct ControlWaker(Arc<Control>);

impl MutEventSubscriber for ControlWaker {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.0.clear_wake();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.wake_fd(), EventSet::IN)) {
            tracing::error!("cannot watch the control eventfd: {e:?}");
        }
    }
}

/// Moves console input into the UART, no faster than the guest drains its FIFO.
struct ConsoleInput {
    input: File,
    drained: EventFd,
    serial: Arc<Mutex<SerialDevice>>,
    watching_input: bool,
    eof: bool,
}

impl ConsoleInput {
    fn set_watch(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watching_input {
            return;
        }
        let ev = Events::new(&self.input, EventSet::IN);
        let res = if on { ops.add(ev) } else { ops.remove(ev) };
        match res {
            Ok(()) => self.watching_input = on,
            Err(e) => tracing::warn!("console input watch {on}: {e:?}"),
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let space = serial.input_space();
        if space == 0 {
            drop(serial);
            self.set_watch(ops, false);
            return;
        }
        let mut buf = [0u8; 64];
        let want = space.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                drop(serial);
                self.eof = true;
                self.set_watch(ops, false);
            }
            Ok(n) => {
                serial.push_input(&buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                drop(serial);
                tracing::warn!("console input: {e}");
                self.eof = true;
                self.set_watch(ops, false);
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
            if !self.eof {
                self.set_watch(ops, true);
            }
        } else if events.fd() == self.input.as_raw_fd() {
            self.read_input(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            tracing::error!("cannot watch the serial drain eventfd: {e:?}");
        }
        self.set_watch(ops, true);
    }
}

/// Notes that the serial device holds an unfinished line (its waker fired).
struct ConsoleWaiting {
    waker: EventFd,
    waiting: Arc<AtomicBool>,
}

impl MutEventSubscriber for ConsoleWaiting {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.waker.read();
        self.waiting.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.waker, EventSet::IN)) {
            tracing::error!("cannot watch the console flush eventfd: {e:?}");
        }
    }
}

/// Console output wiring handed over by the builder: the serial device and the eventfd
/// its [`crate::devices::legacy::ConsoleBuffer`] signals.
pub struct ConsoleOutputSource {
    pub waker: EventFd,
    pub serial: Arc<Mutex<SerialDevice>>,
}

/// The loop's side of console output: when an unfinished line must go out.
struct ConsoleOutput {
    serial: Arc<Mutex<SerialDevice>>,
    waiting: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl ConsoleOutput {
    /// Starts the delay of an unfinished line the waker told of (once per flush).
    fn arm(&mut self, now: Instant) {
        if self.deadline.is_none() && self.waiting.swap(false, Ordering::AcqRel) {
            self.deadline = Some(now + CONSOLE_FLUSH_DELAY);
        }
    }

    /// Milliseconds until the pending line is due (epoll's timeout), -1: none pending.
    fn timeout_ms(&self, now: Instant) -> i32 {
        match self.deadline {
            None => -1,
            Some(d) => {
                let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
                i32::try_from(ms).unwrap_or(i32::MAX)
            }
        }
    }

    fn flush_if_due(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.deadline = None;
            self.flush();
        }
    }

    fn flush(&self) {
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush_output();
    }
}

/// Console input wiring handed over by the builder.
pub struct ConsoleInputSource {
    pub input: File,
    pub drained: EventFd,
    pub serial: Arc<Mutex<SerialDevice>>,
}

pub struct EventLoop {
    manager: EventManager<Subscriber>,
    console_output: Option<ConsoleOutput>,
}

impl EventLoop {
    pub fn new(
        control: Arc<Control>,
        console: Option<ConsoleInputSource>,
        console_output: Option<ConsoleOutputSource>,
        virtio: Vec<VirtioEvents>,
    ) -> Result<Self> {
        let io = |e: event_manager::Error| Error::Host {
            what: "event loop",
            source: std::io::Error::other(format!("{e:?}")),
        };
        let mut manager: EventManager<Subscriber> = EventManager::new().map_err(io)?;
        manager.add_subscriber(Arc::new(Mutex::new(ControlWaker(control))));
        if let Some(c) = console {
            manager.add_subscriber(Arc::new(Mutex::new(ConsoleInput {
                input: c.input,
                drained: c.drained,
                serial: c.serial,
                watching_input: false,
                eof: false,
            })));
        }
        let console_output = console_output.map(|c| {
            let waiting = Arc::new(AtomicBool::new(false));
            manager.add_subscriber(Arc::new(Mutex::new(ConsoleWaiting {
                waker: c.waker,
                waiting: waiting.clone(),
            })));
            ConsoleOutput {
                serial: c.serial,
                waiting,
                deadline: None,
            }
        });
        for device in virtio {
            manager.add_subscriber(Arc::new(Mutex::new(device)));
        }
        Ok(EventLoop {
            manager,
            console_output,
        })
    }

    /// Waits for and dispatches one batch of events (or until an unfinished console line
    /// is due, and writes it out).
    pub fn run_once(&mut self) -> Result<()> {
        let timeout = match &mut self.console_output {
            Some(c) => {
                let now = Instant::now();
                c.arm(now);
                c.timeout_ms(now)
            }
            None => -1,
        };
        let res = match self.manager.run_with_timeout(timeout) {
            Ok(_) => Ok(()),
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(Error::Host {
                what: "event loop",
                source: std::io::Error::other(format!("{e:?}")),
            }),
        };
        if let Some(c) = &mut self.console_output {
            // The waker may have fired in this batch: its delay starts now.
            let now = Instant::now();
            c.arm(now);
            c.flush_if_due(now);
        }
        res
    }

    /// Writes out the console output still buffered (the VM ended).
    pub fn flush_console(&mut self) {
        if let Some(c) = &mut self.console_output {
            c.deadline = None;
            c.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::devices::legacy::ConsoleBuffer;
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_unfinished_console_line_goes_out_after_the_delay() {
        let sink = Sink::default();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            evt(),
            evt(),
            ConsoleBuffer::new(Box::new(sink.clone()), None),
        )));
        let mut out = ConsoleOutput {
            serial: serial.clone(),
            waiting: Arc::new(AtomicBool::new(false)),
            deadline: None,
        };
        let t0 = Instant::now();
        out.arm(t0);
        assert_eq!(out.timeout_ms(t0), -1, "nothing pending: no timeout");

        serial.lock().unwrap().write(0, b"$");
        out.waiting.store(true, Ordering::Release); // what ConsoleWaiting does
        out.arm(t0);
        let delay = i32::try_from(CONSOLE_FLUSH_DELAY.as_millis()).unwrap();
        assert_eq!(out.timeout_ms(t0), delay);
        // Another wakeup before the flush does not push the deadline back.
        out.waiting.store(true, Ordering::Release);
        out.arm(t0 + CONSOLE_FLUSH_DELAY / 2);
        assert_eq!(out.timeout_ms(t0 + CONSOLE_FLUSH_DELAY / 2), delay / 2);

        out.flush_if_due(t0 + CONSOLE_FLUSH_DELAY / 2);
        assert!(sink.0.lock().unwrap().is_empty(), "flushed early");
        out.flush_if_due(t0 + CONSOLE_FLUSH_DELAY);
        assert_eq!(&*sink.0.lock().unwrap(), b"$");
        assert_eq!(out.timeout_ms(t0 + CONSOLE_FLUSH_DELAY), -1);
    }
}
