//! One vsock stream connection between a guest port and a host Unix stream, with the
//! virtio-vsock credit protocol:
//! - guest -> host: hull-vmm advertises `buf_alloc` = [`CONN_BUF_SIZE`] and `fwd_cnt` =
//!   bytes written to the host stream; bytes the guest sent but the host socket did not
//!   take yet wait in `to_host` (never more than `buf_alloc`: a guest that sends past
//!   its credit is reset);
//! - host -> guest: hull-vmm sends no more than the guest's `buf_alloc - (rx_cnt -
//!   fwd_cnt)`, from the guest's latest header.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{Header, OP_CREDIT_UPDATE, OP_RW, TYPE_STREAM};
use super::{CONN_BUF_SIZE, HOST_CID};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST queued for the guest, waiting for its RESPONSE.
    LocalInit,
    Established,
}

/// What reading the host stream gave.
pub enum HostRead {
    Data(usize),
    WouldBlock,
    Eof,
    Error,
}

pub struct Connection {
    pub stream: UnixStream,
    pub token: u64,
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    guest_cid: u64,
    /// The host stream may have data (or EOF) to read.
    pub readable: bool,
    /// The stream is no longer in the muxer's epoll (it hung up).
    pub unwatched: bool,
    to_host: VecDeque<u8>,
    /// Leading bytes of `to_host` written by hull-vmm itself.
    local_pending: usize,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
}

impl Connection {
    pub fn new(
        stream: UnixStream,
        token: u64,
        state: State,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
    ) -> Self {
        Connection {
            stream,
            token,
            state,
            local_port,
            peer_port,
            guest_cid,
            readable: false,
            unwatched: false,
            to_host: VecDeque::new(),
            local_pending: 0,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
        }
    }

    /// A header from host to guest for this connection.
    pub fn header(&mut self, op: u16, flags: u32, len: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Records the guest's credit from any packet it sent on this connection.
    pub fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Wants to send host data to the guest.
    pub fn wants_rx(&self) -> bool {
        self.state == State::Established && self.readable && self.peer_credit() > 0
    }

    /// Wants EPOLLIN: established, not yet known readable, and the guest has credit.
    pub fn wants_read_events(&self) -> bool {
        self.state == State::Established && !self.readable && self.peer_credit() > 0
    }

    pub fn wants_write_events(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Reads host data for the guest into `buf` (at most the guest's credit).
    pub fn read_host(&mut self, buf: &mut [u8]) -> HostRead {
        let max = buf.len().min(self.peer_credit() as usize);
        if max == 0 {
            return HostRead::WouldBlock;
        }
        loop {
            match self.stream.read(&mut buf[..max]) {
                Ok(0) => return HostRead::Eof,
                Ok(n) => {
                    self.rx_cnt += n as u32;
                    return HostRead::Data(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return HostRead::WouldBlock;
                }
                Err(_) => return HostRead::Error,
            }
        }
    }

    /// Guest data for the host. `Err` when the guest overran its credit or the host
    /// stream failed: the connection must be reset.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), ()> {
        if self.to_host.len() + data.len() > CONN_BUF_SIZE as usize {
            return Err(());
        }
        self.to_host.extend(data);
        self.flush()
    }

    /// Queues bytes hull-vmm itself writes to the host stream (the `OK` line). They do
    /// not count against the guest's credit.
    pub fn send_local(&mut self, data: &[u8]) -> Result<(), ()> {
        if !self.to_host.is_empty() {
            return Err(());
        }
        self.local_pending = data.len();
        self.to_host.extend(data);
        self.flush()
    }

    /// Writes as much of `to_host` as the host stream takes.
    pub fn flush(&mut self) -> Result<(), ()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    // fwd_cnt counts guest bytes only, not hull-vmm's own `OK` line.
                    let local = n.min(self.local_pending);
                    self.local_pending -= local;
                    self.fwd_cnt += (n - local) as u32;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    /// A CREDIT_UPDATE is due when the guest would otherwise see less than half its
    /// buffer free.
    pub fn credit_update_due(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CONN_BUF_SIZE / 2
    }

    pub fn credit_update(&mut self) -> Header {
        self.header(OP_CREDIT_UPDATE, 0, 0)
    }

    pub fn data_header(&mut self, len: u32) -> Header {
        self.header(OP_RW, 0, len)
    }
}
