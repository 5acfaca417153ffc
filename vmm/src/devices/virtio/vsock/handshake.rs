//! The host side of the hybrid handshake: a client writes `CONNECT <port>\n` and gets
//! `OK <host_port>\n` once the guest accepted. The line is read byte by byte so that
//! nothing after the newline (the client's first payload) is swallowed.

use std::io::{ErrorKind, Read};

/// Longest line accepted, newline included (`CONNECT 4294967295\n` is 19 bytes).
pub const MAX_LINE: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("the line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not a CONNECT line: {0:?}")]
    Malformed(String),
    #[error("the client closed the connection")]
    Closed,
    #[error("read: {0}")]
    Io(String),
}

/// Parses `CONNECT <port>` (without the newline). One space, decimal port, nothing else.
pub fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    let bad = || HandshakeError::Malformed(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ").ok_or_else(bad)?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    port.parse::<u32>().map_err(|_| bad())
}

/// A `CONNECT` line arriving on a non-blocking stream.
#[derive(Debug, Default)]
pub struct LineReader {
    line: Vec<u8>,
}

impl LineReader {
    /// Reads what is available. `Ok(Some(port))` once a full valid line arrived,
    /// `Ok(None)` if more is needed.
    pub fn poll(&mut self, stream: &mut impl Read) -> Result<Option<u32>, HandshakeError> {
        loop {
            let mut b = [0u8; 1];
            match stream.read(&mut b) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) if b[0] == b'\n' => return parse_connect(&self.line).map(Some),
                Ok(_) => {
                    if self.line.len() + 1 >= MAX_LINE {
                        return Err(HandshakeError::TooLong);
                    }
                    self.line.push(b[0]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(HandshakeError::Io(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Ok(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 7\r"), Ok(7));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT 4294967296",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 1 2",
            b"connect 1",
            b"CONNECT  1",
            b"\xffCONNECT 1",
            b"",
        ] {
            assert!(parse_connect(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn line_reader_stops_at_the_newline() {
        let mut r = LineReader::default();
        let mut input: &[u8] = b"CONNECT 52\npayload";
        assert_eq!(r.poll(&mut input), Ok(Some(52)));
        assert_eq!(input, b"payload");
        let mut r = LineReader::default();
        let mut long: &[u8] = &[b'C'; 100];
        assert_eq!(r.poll(&mut long), Err(HandshakeError::TooLong));
        let mut r = LineReader::default();
        let mut short: &[u8] = b"CONN";
        assert_eq!(r.poll(&mut short), Err(HandshakeError::Closed));
    }
}
