//! The vhost-user-fs device. The vhost-user exchange runs on the event loop thread: the
//! guest's DRIVER_OK (a vCPU thread) only records the activation and wakes the loop.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::MAX_TAG;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, QueuePosition, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};

/// virtio-fs device id.
const VIRTIO_ID_FS: u32 = 26;
/// hiprio + one request queue.
const QUEUE_SIZES: [u16; 2] = [1024, 1024];
/// Virtio feature bits passed through from the backend (besides VERSION_1): none of the
/// others (ring layout, notification) are meaningful across this transport yet.
const PASSTHROUGH: u64 = VIRTIO_F_VERSION_1;
const SETUP: u64 = u64::MAX;

pub struct Fs {
    frontend: Frontend,
    backend_features: u64,
    config: [u8; 40],
    epoll: Epoll,
    setup: EventFd,
    /// Per queue: the eventfd virtiofsd writes when it used buffers.
    calls: Vec<EventFd>,
    pending: Option<Activation>,
    active: Option<Activation>,
}

fn vhost_err(what: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |e| Error::Host {
        what,
        source: std::io::Error::other(e.to_string()),
    }
}

fn vhost_failed(what: &'static str) -> impl Fn(vhost::Error) -> String {
    move |err| format!("{what}: {err}")
}

impl Fs {
    /// Connects to virtiofsd's socket; `tag` is what the guest mounts.
    pub fn connect(socket: &Path, tag: &str) -> Result<Fs> {
        if tag.is_empty() || tag.len() > MAX_TAG {
            return Err(Error::Config(format!("fs tag must be 1..={MAX_TAG} bytes")));
        }
        let frontend =
            Frontend::connect(socket, QUEUE_SIZES.len() as u64).map_err(|e| Error::File {
                path: socket.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
        frontend
            .set_owner()
            .map_err(vhost_err("vhost-user SET_OWNER"))?;
        let backend_features = frontend
            .get_features()
            .map_err(vhost_err("vhost-user GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::Config(
                "the vhost-user backend lacks VERSION_1".into(),
            ));
        }
        let mut config = [0u8; 40];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[36..40].copy_from_slice(&1u32.to_le_bytes()); // num_request_queues
        let epoll = Epoll::new().map_err(Error::host("epoll"))?;
        let setup = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::host("eventfd"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                setup.as_raw_fd(),
                EpollEvent::new(EventSet::IN, SETUP),
            )
            .map_err(Error::host("epoll"))?;
        let mut calls = Vec::new();
        for i in 0..QUEUE_SIZES.len() {
            let call = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::host("eventfd"))?;
            epoll
                .ctl(
                    ControlOperation::Add,
                    call.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, i as u64),
                )
                .map_err(Error::host("epoll"))?;
            calls.push(call);
        }
        Ok(Fs {
            frontend,
            backend_features,
            config,
            epoll,
            setup,
            calls,
            pending: None,
            active: None,
        })
    }

    /// The vhost-user exchange for an activation.
    fn start_backend(&mut self, a: &Activation) -> std::result::Result<(), String> {
        let f = &mut self.frontend;
        let mut features = a.features;
        if self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        f.set_features(features)
            .map_err(vhost_failed("SET_FEATURES"))?;
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = f
                .get_protocol_features()
                .map_err(vhost_failed("GET_PROTOCOL_FEATURES"))?;
            f.set_protocol_features(offered & VhostUserProtocolFeatures::MQ)
                .map_err(vhost_failed("SET_PROTOCOL_FEATURES"))?;
        }
        let regions = a
            .mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(vhost_failed(
                    "memory region (is guest memory a shared memfd?)",
                ))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        f.set_mem_table(&regions)
            .map_err(vhost_failed("SET_MEM_TABLE"))?;
        for (i, q) in a.queues.iter().enumerate() {
            let host = |gpa: u64| {
                a.mem
                    .get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(|err| format!("ring address {gpa:#x}: {err}"))
            };
            let rings = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            f.set_vring_num(i, q.size())
                .map_err(vhost_failed("SET_VRING_NUM"))?;
            f.set_vring_addr(i, &rings)
                .map_err(vhost_failed("SET_VRING_ADDR"))?;
            // 0 on a fresh device; after a restore, where the guest left the ring.
            f.set_vring_base(i, q.next_avail())
                .map_err(vhost_failed("SET_VRING_BASE"))?;
            f.set_vring_call(i, &self.calls[i])
                .map_err(vhost_failed("SET_VRING_CALL"))?;
            let kick = a.notifiers.get(i).ok_or("no notifier")?;
            f.set_vring_kick(i, kick)
                .map_err(vhost_failed("SET_VRING_KICK"))?;
        }
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            for i in 0..a.queues.len() {
                f.set_vring_enable(i, true)
                    .map_err(vhost_failed("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn features(&self) -> u64 {
        self.backend_features & PASSTHROUGH
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> std::result::Result<(), ActivateError> {
        if a.notifiers.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueNotReady(a.notifiers.len()));
        }
        self.pending = Some(a);
        let _ = self.setup.write(1);
        Ok(())
    }

    fn reset(&mut self) {
        // virtiofsd cannot be told to forget a running device short of dropping the
        // connection; a reset therefore stops delivering its interrupts.
        self.pending = None;
        self.active = None;
    }

    /// virtiofsd keeps its place in the rings itself. With the vCPUs paused and no
    /// request in flight (every available entry used), that place is the used ring's
    /// index, which the guest's memory holds. In-flight requests would be lost with
    /// this virtiofsd, so the snapshot is refused then.
    fn queue_positions(&self) -> std::result::Result<Vec<QueuePosition>, String> {
        let Some(a) = self.active.as_ref().or(self.pending.as_ref()) else {
            return Ok(Vec::new());
        };
        let mut positions = Vec::with_capacity(a.queues.len());
        for (i, q) in a.queues.iter().enumerate() {
            let avail = q
                .avail_idx(&a.mem, Ordering::Acquire)
                .map_err(|e| format!("queue {i}: avail index: {e:?}"))?;
            let used = q
                .used_idx(&a.mem, Ordering::Acquire)
                .map_err(|e| format!("queue {i}: used index: {e:?}"))?;
            if avail != used {
                return Err(format!(
                    "virtio-fs queue {i} has {} request(s) in flight in virtiofsd",
                    (avail - used).0
                ));
            }
            positions.push(QueuePosition {
                next_avail: used.0,
                next_used: used.0,
            });
        }
        Ok(positions)
    }

    /// virtiofsd reads the notification eventfds itself.
    fn handles_notifications(&self) -> bool {
        false
    }

    fn process_queue(&mut self, _index: usize) {}

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(&mut self) {
        let mut events = [EpollEvent::default(); 4];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        for ev in &events[..n] {
            match ev.data() {
                SETUP => {
                    let _ = self.setup.read();
                    if let Some(a) = self.pending.take() {
                        match self.start_backend(&a) {
                            Ok(()) => self.active = Some(a),
                            Err(e) => {
                                tracing::error!("virtio-fs: vhost-user setup failed: {e}");
                                a.irq.signal_config();
                            }
                        }
                    }
                }
                i => {
                    if let Some(call) = self.calls.get(i as usize) {
                        let _ = call.read();
                    }
                    if let Some(a) = &self.active {
                        a.irq.signal_used();
                    }
                }
            }
        }
    }
}
