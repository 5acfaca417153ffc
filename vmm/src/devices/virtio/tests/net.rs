//! virtio-net through the test driver, with a SOCK_SEQPACKET socket pair standing in for
//! the tap (one read = one frame), and a real tap when the host allows it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::virtio_net::*;

use super::driver::{Driver, DATA, MEM_SIZE};
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::VIRTIO_F_VERSION_1;

const RX: usize = 0;
const TX: usize = 1;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 7];

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn started() -> (Driver, OwnedFd) {
    let (ours, peer) = socketpair();
    let net = Net::new(Tap::from_fd(ours.as_raw_fd()).unwrap(), MAC).unwrap();
    let mut d = Driver::new(Arc::new(Mutex::new(net)));
    d.start(1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS, 2);
    (d, peer)
}

fn peer_send(peer: &OwnedFd, frame: &[u8]) {
    // SAFETY: writing a live buffer to a live socket.
    let n = unsafe { libc::write(peer.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(n, frame.len() as isize);
}

fn peer_recv(peer: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70000];
    // SAFETY: reading into a live buffer; MSG_DONTWAIT keeps the test from blocking.
    let n = unsafe {
        libc::recv(
            peer.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

fn backend(d: &Driver) {
    std::thread::sleep(Duration::from_millis(2));
    d.device.lock().unwrap().process_backend();
}

#[test]
fn mac_and_no_offloads_without_a_vnet_header_tap() {
    let (ours, _peer) = socketpair();
    let net = Net::new(Tap::from_fd(ours.as_raw_fd()).unwrap(), MAC).unwrap();
    let mut d = Driver::new(Arc::new(Mutex::new(net)));
    let f = d.device_features();
    assert_eq!(
        f,
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
    );
    // Offloads the host cannot honour are refused even if the driver asks.
    assert!(!d.negotiate(VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_GUEST_TSO4));
    let mut mac = [0u8; 6];
    d.transport_read_config(0, &mut mac);
    assert_eq!(mac, MAC);
}

#[test]
fn frames_both_ways() {
    let (mut d, peer) = started();
    // TX: header + frame in two descriptors; the tap gets the frame only.
    d.write(DATA, &[0u8; 12]);
    d.write(DATA + 0x100, &[0xab; 60]);
    d.add_chain(TX, &[(DATA, 12, false), (DATA + 0x100, 60, false)]);
    d.notify(TX as u32);
    assert_eq!(peer_recv(&peer).unwrap(), vec![0xab; 60]);
    assert_eq!(d.used(TX).len(), 1);
    // RX: no buffer yet -> the frame waits (and the device does not spin).
    peer_send(&peer, &[0xcd; 100]);
    backend(&d);
    assert!(d.used(RX).is_empty());
    d.add_chain(RX, &[(DATA + 0x1000, 1526, true)]);
    d.notify(RX as u32);
    let used = d.used(RX);
    assert_eq!(used, vec![(0, 112)]);
    let got = d.read(DATA + 0x1000, 112);
    assert_eq!(&got[10..12], &[1, 0], "num_buffers = 1");
    assert_eq!(&got[12..], &[0xcd; 100][..]);
    // Next frame goes straight to a posted buffer.
    d.add_chain(RX, &[(DATA + 0x2000, 1526, true)]);
    d.notify(RX as u32);
    peer_send(&peer, &[0xef; 64]);
    backend(&d);
    assert_eq!(d.used(RX), vec![(1, 76)]);
    assert!(d.take_irq());
}

#[test]
fn hostile_chains_are_dropped() {
    let (mut d, peer) = started();
    // TX with a device-writable descriptor, beyond guest memory, longer than a frame,
    // shorter than the header: nothing reaches the tap, every buffer comes back.
    d.add_chain(TX, &[(DATA, 12, false), (DATA + 0x100, 60, true)]);
    d.add_chain(TX, &[(DATA, 12, false), (MEM_SIZE - 10, 60, false)]);
    d.add_chain(TX, &[(DATA, 12, false), (DATA, 0x20000, false)]);
    d.add_chain(TX, &[(DATA, 8, false)]);
    d.notify(TX as u32);
    assert_eq!(d.used(TX).len(), 4);
    assert!(peer_recv(&peer).is_none());
    // RX buffers that are read-only, too small or outside memory: frames dropped.
    d.add_chain(RX, &[(DATA + 0x1000, 1526, false)]);
    d.add_chain(RX, &[(DATA + 0x1000, 20, true)]);
    d.add_chain(RX, &[(MEM_SIZE - 100, 1526, true)]);
    for _ in 0..3 {
        peer_send(&peer, &[1u8; 100]);
    }
    backend(&d);
    assert_eq!(d.used(RX), vec![(0, 0), (1, 0), (2, 0)]);
}

#[test]
fn a_real_tap_with_vnet_headers_offers_offloads() {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let Ok(tun) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    else {
        println!("SKIP a_real_tap_with_vnet_headers_offers_offloads: no /dev/net/tun");
        return;
    };
    let mut ifreq = [0u8; 40];
    ifreq[..9].copy_from_slice(b"hulltest\0");
    let flags: i16 = 0x0002 | 0x1000 | 0x4000; // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq (40 bytes).
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) } != 0 {
        println!(
            "SKIP a_real_tap_with_vnet_headers_offers_offloads: TUNSETIFF: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let tap = Tap::from_fd(tun.as_raw_fd()).unwrap();
    assert!(tap.vnet_hdr());
    let mut d = Driver::new(Arc::new(Mutex::new(Net::new(tap, MAC).unwrap())));
    let f = d.device_features();
    for b in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO4,
    ] {
        assert_ne!(f & 1 << b, 0, "feature {b}");
    }
    // The driver acks receive offloads: the device sets them on the tap (TUNSETOFFLOAD).
    d.start(f & !VIRTIO_F_VERSION_1, 2);
    d.notify(RX as u32);
}

impl Driver {
    fn transport_read_config(&mut self, off: u64, data: &mut [u8]) {
        use crate::bus::BusDevice;
        self.transport.read(0x100 + off, data);
    }
}
