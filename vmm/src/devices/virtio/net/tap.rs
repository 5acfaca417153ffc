//! A tap device opened by someone else: hull-vmm duplicates the fd, makes it
//! non-blocking and asks the kernel what it is.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use super::VNET_HDR_LEN;

const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_VNET_HDR: i16 = 0x4000;

/// `TUN_F_*` offload flags for [`Tap::set_offload`].
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

pub struct Tap {
    file: File,
    vnet_hdr: bool,
}

impl Tap {
    /// Takes a duplicate of `fd` (the caller keeps its own). Any packet fd works (tests
    /// use a socket pair); only a tap opened with `IFF_VNET_HDR` enables offloads.
    pub fn from_fd(fd: RawFd) -> io::Result<Tap> {
        // SAFETY: F_DUPFD_CLOEXEC on a caller-supplied fd; failure is checked.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh fd owned by nobody else.
        let file = unsafe { File::from_raw_fd(dup) };
        // SAFETY: F_GETFL/F_SETFL on an fd we own.
        unsafe {
            let flags = libc::fcntl(dup, libc::F_GETFL);
            if flags < 0 || libc::fcntl(dup, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut ifreq = [0u8; 40];
        // SAFETY: TUNGETIFF writes a struct ifreq (40 bytes) into the buffer.
        let is_tap = unsafe { libc::ioctl(dup, TUNGETIFF, ifreq.as_mut_ptr()) } == 0;
        let flags = i16::from_ne_bytes([ifreq[16], ifreq[17]]);
        let mut vnet_hdr = is_tap && flags & IFF_VNET_HDR != 0;
        if vnet_hdr {
            let size = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
            vnet_hdr = unsafe { libc::ioctl(dup, TUNSETVNETHDRSZ, &size) } == 0;
        }
        Ok(Tap { file, vnet_hdr })
    }

    /// Frames carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Which offloaded frames the tap may hand to the guest.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        if !self.vnet_hdr {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        let rc =
            unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One frame in (non-blocking).
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    /// One frame out.
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
