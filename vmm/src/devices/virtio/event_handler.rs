//! Feeds a virtio device from the event loop: its queue-notification eventfds (the
//! ioeventfds KVM signals when the guest writes QueueNotify) and its backend fd.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;

/// `data` value of the backend fd's events (queue events carry their index).
const BACKEND: u32 = u32::MAX;

pub struct VirtioEvents {
    device: Arc<Mutex<dyn VirtioDevice>>,
    queue_evts: Vec<EventFd>,
    backend: Option<RawFd>,
}

impl VirtioEvents {
    /// `queue_evts` are clones of the transport's notification eventfds.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, queue_evts: Vec<EventFd>) -> Self {
        let (backend, ours) = {
            let d = device.lock().unwrap_or_else(|p| p.into_inner());
            (d.backend_fd(), d.handles_notifications())
        };
        let queue_evts = if ours { queue_evts } else { Vec::new() };
        VirtioEvents {
            device,
            queue_evts,
            backend,
        }
    }
}

impl MutEventSubscriber for VirtioEvents {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut device = self.device.lock().unwrap_or_else(|p| p.into_inner());
        match events.data() {
            BACKEND => device.process_backend(),
            index => {
                if let Some(evt) = self.queue_evts.get(index as usize) {
                    let _ = evt.read();
                    device.process_queue(index as usize);
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("cannot watch virtio queue {i}: {e:?}");
            }
        }
        if let Some(fd) = self.backend {
            if let Err(e) = ops.add(Events::with_data_raw(fd, BACKEND, EventSet::IN)) {
                tracing::error!("cannot watch the virtio backend: {e:?}");
            }
        }
    }
}
