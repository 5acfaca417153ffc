//! The host side of the device: the hybrid Unix socket, one Unix stream per connection,
//! and the routing between them and guest packets. It owns its own epoll set (the event
//! loop watches that one fd), so adding and dropping streams never races the loop.
//!
//! Guest input is hostile: packets with the wrong CIDs are dropped, anything that does
//! not fit a connection's state is answered with RST, a guest that overruns its credit
//! is reset, and the number of connections and queued control packets is bounded.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, HostRead, State};
use super::handshake::LineReader;
use super::packet::*;
use super::uds::connect_nonblocking;
use super::{CONN_BUF_SIZE, HOST_CID};

/// (host port, guest port).
type Key = (u32, u32);

const LISTENER: u64 = 0;
const MAX_CONNECTIONS: usize = 1024;
const MAX_HANDSHAKES: usize = 64;
const MAX_QUEUED_CONTROL: usize = 4096;
/// Host ports handed out to host-initiated connections start here (as Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    handshakes: HashMap<u64, (UnixStream, LineReader)>,
    conns: HashMap<Key, Connection>,
    tokens: HashMap<u64, Key>,
    rx_ctrl: VecDeque<Header>,
    rx_data: VecDeque<Key>,
    next_token: u64,
    next_local_port: u32,
}

impl Muxer {
    /// Binds `uds_path` (which must not exist).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            rx_ctrl: VecDeque::new(),
            rx_data: VecDeque::new(),
            next_token: 1,
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The fd to watch: readable when a socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Serves ready sockets (never blocks).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("vsock epoll: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let set = ev.event_set();
            match ev.data() {
                LISTENER => self.accept_all(),
                token if self.handshakes.contains_key(&token) => self.handshake_ready(token),
                token => self.conn_event(token, set),
            }
        }
    }

    /// True when packets wait for the guest's RX queue.
    pub fn has_rx(&self) -> bool {
        !self.rx_ctrl.is_empty() || !self.rx_data.is_empty()
    }

    /// Next packet for the guest: its header and how many bytes of `buf` it carries.
    pub fn fill_rx(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.rx_ctrl.pop_front() {
            return Some((h, 0));
        }
        while let Some(key) = self.rx_data.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if !conn.wants_rx() {
                self.refresh(key);
                continue;
            }
            match conn.read_host(buf) {
                HostRead::Data(n) => {
                    let h = conn.data_header(n as u32);
                    self.refresh(key);
                    return Some((h, n));
                }
                HostRead::WouldBlock => self.refresh(key),
                HostRead::Eof => {
                    let h = conn.header(OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0);
                    // The guest forgets the connection on a full shutdown; so do we.
                    self.remove(key);
                    return Some((h, 0));
                }
                HostRead::Error => {
                    let h = conn.header(OP_RST, 0, 0);
                    self.remove(key);
                    return Some((h, 0));
                }
            }
        }
        None
    }

    /// A packet the guest sent (`data` is its payload, `h.len` bytes).
    pub fn send_to_host(&mut self, h: &Header, data: &[u8]) {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            tracing::debug!(?h, "vsock: packet with wrong CIDs dropped");
            return;
        }
        if h.type_ != TYPE_STREAM {
            self.reply_rst(h);
            return;
        }
        let key = (h.dst_port, h.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            match h.op {
                OP_REQUEST => self.connect_to_host(h),
                OP_RST => {}
                _ => self.reply_rst(h),
            }
            return;
        };
        conn.update_peer_credit(h);
        let ok = match (h.op, conn.state) {
            (OP_RESPONSE, State::LocalInit) => {
                conn.state = State::Established;
                let line = format!("OK {}\n", conn.local_port);
                conn.send_local(line.as_bytes())
            }
            (OP_RW, State::Established) => {
                let r = conn.send_to_host(data);
                if r.is_ok() && conn.credit_update_due() {
                    let u = conn.credit_update();
                    self.push_ctrl(u);
                }
                r
            }
            (OP_CREDIT_UPDATE, _) => Ok(()),
            (OP_CREDIT_REQUEST, State::Established) => {
                let u = conn.credit_update();
                self.push_ctrl(u);
                Ok(())
            }
            (OP_SHUTDOWN, State::Established) => {
                if h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    // Best effort: hand over what the host socket takes now.
                    let _ = conn.flush();
                    Err(())
                } else {
                    Ok(())
                }
            }
            (OP_RST, _) => {
                self.remove(key);
                return;
            }
            _ => Err(()),
        };
        match ok {
            Ok(()) => self.refresh(key),
            Err(()) => self.kill(key),
        }
    }

    /// Drops every connection (device reset).
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        let tokens: Vec<u64> = self.handshakes.keys().copied().collect();
        for token in tokens {
            self.drop_handshake(token);
        }
        self.rx_ctrl.clear();
        self.rx_data.clear();
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn push_ctrl(&mut self, h: Header) {
        if self.rx_ctrl.len() >= MAX_QUEUED_CONTROL {
            tracing::warn!("vsock: guest does not drain its RX queue; control packet dropped");
            return;
        }
        self.rx_ctrl.push_back(h);
    }

    fn reply_rst(&mut self, h: &Header) {
        self.push_ctrl(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            buf_alloc: CONN_BUF_SIZE,
            ..Header::default()
        });
    }

    fn watch(&self, fd: RawFd, op: ControlOperation, set: EventSet, token: u64) -> bool {
        match self.epoll.ctl(op, fd, EpollEvent::new(set, token)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("vsock epoll_ctl: {e}");
                false
            }
        }
    }

    fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES
                        || self.conns.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    let token = self.token();
                    if self.watch(
                        stream.as_raw_fd(),
                        ControlOperation::Add,
                        EventSet::IN,
                        token,
                    ) {
                        self.handshakes
                            .insert(token, (stream, LineReader::default()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!("vsock accept: {e}");
                    }
                    return;
                }
            }
        }
    }

    fn drop_handshake(&mut self, token: u64) {
        if let Some((stream, _)) = self.handshakes.remove(&token) {
            self.unwatch(stream.as_raw_fd());
        }
    }

    fn handshake_ready(&mut self, token: u64) {
        let Some((stream, reader)) = self.handshakes.get_mut(&token) else {
            return;
        };
        let port = match reader.poll(stream) {
            Ok(None) => return,
            Ok(Some(port)) => port,
            Err(e) => {
                tracing::debug!("vsock handshake: {e}");
                self.drop_handshake(token);
                return;
            }
        };
        let Some((stream, _)) = self.handshakes.remove(&token) else {
            return;
        };
        let Some(local_port) = self.free_local_port(port) else {
            self.unwatch(stream.as_raw_fd());
            return;
        };
        let mut conn = Connection::new(
            stream,
            token,
            State::LocalInit,
            local_port,
            port,
            self.guest_cid,
        );
        let request = conn.header(OP_REQUEST, 0, 0);
        let key = (local_port, port);
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        self.push_ctrl(request);
        self.refresh(key);
    }

    fn free_local_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..MAX_CONNECTIONS * 2 {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }

    fn connect_to_host(&mut self, h: &Header) {
        let key = (h.dst_port, h.src_port);
        if self.conns.len() >= MAX_CONNECTIONS {
            self.reply_rst(h);
            return;
        }
        let mut path = self.uds_path.as_os_str().to_owned();
        path.push(format!("_{}", h.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to {path:?}: {e}");
                self.reply_rst(h);
                return;
            }
        };
        let token = self.token();
        if !self.watch(
            stream.as_raw_fd(),
            ControlOperation::Add,
            EventSet::empty(),
            token,
        ) {
            self.reply_rst(h);
            return;
        }
        let mut conn = Connection::new(
            stream,
            token,
            State::Established,
            key.0,
            key.1,
            self.guest_cid,
        );
        conn.update_peer_credit(h);
        let response = conn.header(OP_RESPONSE, 0, 0);
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        self.push_ctrl(response);
        self.refresh(key);
    }

    fn conn_event(&mut self, token: u64, set: EventSet) {
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let hangup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if conn.state == State::LocalInit {
            if hangup {
                self.kill(key);
            }
            return;
        }
        if set.contains(EventSet::OUT) {
            if conn.flush().is_err() {
                self.kill(key);
                return;
            }
            // The host drained bytes the guest is waiting to send more after.
            if conn.credit_update_due() && self.rx_ctrl.len() < MAX_QUEUED_CONTROL {
                self.rx_ctrl.push_back(conn.credit_update());
            }
        }
        if set.contains(EventSet::IN) || hangup {
            conn.readable = true;
        }
        if hangup && !conn.unwatched {
            // Level-triggered HUP cannot be masked: stop watching, read what is left.
            conn.unwatched = true;
            let fd = conn.stream.as_raw_fd();
            self.unwatch(fd);
        }
        self.refresh(key);
    }

    /// Re-computes a connection's epoll interest and RX queueing.
    fn refresh(&mut self, key: Key) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        if !conn.unwatched {
            let mut set = EventSet::empty();
            if conn.wants_read_events() {
                set |= EventSet::IN;
            }
            if conn.wants_write_events() {
                set |= EventSet::OUT;
            }
            self.watch(
                conn.stream.as_raw_fd(),
                ControlOperation::Modify,
                set,
                conn.token,
            );
        }
        if conn.wants_rx() && !self.rx_data.contains(&key) {
            self.rx_data.push_back(key);
        }
    }

    /// Drops a connection and tells the guest (RST).
    fn kill(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            let rst = conn.header(OP_RST, 0, 0);
            self.push_ctrl(rst);
        }
        self.remove(key);
    }

    /// Drops a connection silently (its stream closes: the host sees EOF).
    fn remove(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            if !conn.unwatched {
                self.unwatch(conn.stream.as_raw_fd());
            }
            self.tokens.remove(&conn.token);
        }
        self.rx_data.retain(|k| *k != key);
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
