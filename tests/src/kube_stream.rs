//! A client of containerd's streaming server, which serves CRI's Exec, Attach and
//! PortForward URLs, spoken to as kubectl does: websocket with the channel protocol
//! `v4.channel.k8s.io`. Just enough of RFC 6455: the handshake, masked binary frames
//! out, frames in. Each message is one channel byte and data. For exec and attach the
//! channels are stdin 0, stdout 1, stderr 2, status 3 (a JSON `Status` when the
//! process ends) and resize 4 (JSON `{"Width":W,"Height":H}`); for port-forward each
//! port has a data channel (2n) and an error channel (2n+1), and each channel's first
//! message is the port (u16 LE).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;

/// An open websocket to a streaming URL.
pub struct Stream {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Stream {
    /// Connects to `url` (`http://host:port/path`) with `query` appended, and upgrades.
    pub fn open(url: &str, query: &str) -> Stream {
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("not an http:// URL: {url}"));
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let s = TcpStream::connect(host)
            .unwrap_or_else(|e| panic!("connect to the streaming server {host}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(90)))
            .expect("read timeout");
        let mut writer = s.try_clone().expect("clone");
        let sep = if query.is_empty() { "" } else { "?" };
        write!(
            writer,
            "GET /{path}{sep}{query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
        )
        .expect("handshake");
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            headers.push_str(&line);
        }
        assert!(
            status.contains(" 101 "),
            "{url}: no websocket upgrade: {status}{headers}"
        );
        Stream { reader, writer }
    }

    /// A handle that sends on this stream (for a writer thread).
    pub fn sender(&self) -> Sender {
        Sender(self.writer.try_clone().expect("clone"))
    }

    /// The next message: its channel and data; None once the stream is closed.
    pub fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let msg = read_message(&mut self.reader)?;
        let (&channel, data) = msg.split_first()?;
        Some((channel, data.to_vec()))
    }
}

/// Sends messages on a [`Stream`].
pub struct Sender(TcpStream);

impl Sender {
    /// `data` on `channel`, in frames of at most 16 KiB.
    pub fn send(&mut self, channel: u8, data: &[u8]) {
        for chunk in data.chunks(16 * 1024) {
            let mut msg = vec![channel];
            msg.extend_from_slice(chunk);
            write_frame(&mut self.0, 0x2, &msg);
        }
    }

    /// A close frame: the end of this side.
    pub fn close(&mut self) {
        write_frame(&mut self.0, 0x8, &[0x03, 0xe8]);
    }
}

/// What an exec or attach session showed.
#[derive(Debug, Default)]
pub struct Session {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The status JSON of the status channel, if one came.
    pub status: Option<String>,
}

impl Session {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs an exec or attach session at `url`: `stdin` is sent (after `stdin_delay`, so a
/// terminal is ready), output is gathered until a status comes, the stream closes, or
/// `enough` says the output is what was waited for.
pub fn session(url: &str, stdin: Option<&[u8]>, enough: impl Fn(&Session) -> bool) -> Session {
    session_sized(url, None, stdin, enough)
}

/// [`session`], with the terminal resized to `(columns, rows)` first (what kubectl
/// sends on the resize channel when the session opens).
pub fn session_sized(
    url: &str,
    size: Option<(u16, u16)>,
    stdin: Option<&[u8]>,
    enough: impl Fn(&Session) -> bool,
) -> Session {
    let mut stream = Stream::open(url, "");
    let mut sender = stream.sender();
    if let Some((width, height)) = size {
        sender.send(
            RESIZE,
            format!("{{\"Width\":{width},\"Height\":{height}}}").as_bytes(),
        );
    }
    let input = stdin.map(<[u8]>::to_vec);
    let writer = std::thread::spawn(move || {
        if let Some(data) = input {
            std::thread::sleep(Duration::from_millis(500));
            sender.send(STDIN, &data);
        }
        sender
    });
    let mut s = Session::default();
    while let Some((channel, data)) = stream.recv() {
        match channel {
            STDOUT => s.stdout.extend_from_slice(&data),
            STDERR => s.stderr.extend_from_slice(&data),
            STATUS if !data.is_empty() => {
                s.status = Some(String::from_utf8_lossy(&data).into_owned());
                break;
            }
            _ => {}
        }
        if enough(&s) {
            break;
        }
    }
    if let Ok(mut sender) = writer.join() {
        sender.close();
    }
    s
}

/// Port-forward through `url` to `port`: sends `data` on its data channel and returns
/// what came back once `data.len()` bytes did or the stream ended; panics on anything
/// on its error channel.
pub fn port_forward_echo(url: &str, port: u16, data: &[u8]) -> Vec<u8> {
    let mut stream = Stream::open(url, &format!("port={port}"));
    let mut sender = stream.sender();
    let payload = data.to_vec();
    let writer = std::thread::spawn(move || {
        sender.send(0, &payload);
        sender
    });
    let mut announced = 0;
    let mut back = Vec::new();
    while back.len() < data.len() {
        let Some((channel, body)) = stream.recv() else {
            break;
        };
        if announced < 2 && body.len() == 2 && u16::from_le_bytes([body[0], body[1]]) == port {
            announced += 1;
            continue;
        }
        match channel {
            0 => back.extend_from_slice(&body),
            1 => panic!("port-forward error: {}", String::from_utf8_lossy(&body)),
            other => panic!("port-forward message on channel {other}"),
        }
    }
    if let Ok(mut sender) = writer.join() {
        sender.close();
    }
    back
}

/// One masked frame of `opcode`.
fn write_frame(w: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    // The server may have closed already (a finished exec): nothing more to say then.
    let _ = w.write_all(&frame);
}

/// The next data message (fragments joined; pings and pongs skipped); None at a close
/// frame or the stream's end.
fn read_message(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut message = Vec::new();
    loop {
        let mut head = [0u8; 2];
        r.read_exact(&mut head).ok()?;
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).ok()?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).ok()?;
            len = u64::from_be_bytes(b);
        }
        let mask = if head[1] & 0x80 != 0 {
            let mut m = [0u8; 4];
            r.read_exact(&mut m).ok()?;
            Some(m)
        } else {
            None
        };
        let mut body = vec![0u8; usize::try_from(len).ok()?];
        r.read_exact(&mut body).ok()?;
        if let Some(m) = mask {
            body.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b ^= m[i % 4]);
        }
        match opcode {
            0x8 => return None,
            0x9 | 0xa => continue,
            _ => message.extend_from_slice(&body),
        }
        if fin {
            return Some(message);
        }
    }
}
