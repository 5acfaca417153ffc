//! The VMM's own thread: an epoll loop (event-manager) serving host-side events while
//! vCPU threads run the guest. Subscribers: the control mailbox (stop/pause/resume and
//! "the VM is ending"), the serial console input, and virtio devices (queue
//! notifications and host-side backends).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use crate::control::Control;
use crate::devices::legacy::SerialDevice;
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

/// Console input wiring handed over by the builder.
pub struct ConsoleInputSource {
    pub input: File,
    pub drained: EventFd,
    pub serial: Arc<Mutex<SerialDevice>>,
}

pub struct EventLoop {
    manager: EventManager<Subscriber>,
}

impl EventLoop {
    pub fn new(
        control: Arc<Control>,
        console: Option<ConsoleInputSource>,
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
        for device in virtio {
            manager.add_subscriber(Arc::new(Mutex::new(device)));
        }
        Ok(EventLoop { manager })
    }

    /// Waits for and dispatches one batch of events.
    pub fn run_once(&mut self) -> Result<()> {
        match self.manager.run_with_timeout(-1) {
            Ok(_) => Ok(()),
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(Error::Host {
                what: "event loop",
                source: std::io::Error::other(format!("{e:?}")),
            }),
        }
    }
}
