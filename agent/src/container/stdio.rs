//! A process's stdio as the agent sees it: the agent's ends of the pipes (or the pty
//! master), read and written on request only (the pull model: a host that does not ask
//! leaves the data in the kernel pipe, so a fast writer blocks instead of the agent
//! buffering without bound).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The most bytes one ReadStdout/ReadStderr answers with.
pub const MAX_READ_LEN: usize = 1 << 20;

/// What a read request may return: at least 1 byte (0 asks for the default), at most
/// [`MAX_READ_LEN`].
pub fn capped_len(asked: u32) -> usize {
    match usize::try_from(asked) {
        Ok(0) | Err(_) => MAX_READ_LEN,
        Ok(n) => n.min(MAX_READ_LEN),
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// The read end of a process's output (a pipe, or a pty master).
#[derive(Debug)]
pub struct Reader {
    fd: AsyncFd<OwnedFd>,
    eof: bool,
}

impl Reader {
    pub fn new(fd: OwnedFd) -> io::Result<Reader> {
        set_nonblocking(&fd)?;
        Ok(Reader {
            // SAFETY: an OwnedFd is a valid open fd, owned by the AsyncFd until it is
            // dropped, and its as_raw_fd always returns that same fd.
            fd: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)?,
            eof: false,
        })
    }

    /// The end of the stream was read.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Up to `len` bytes, waiting until at least one is there; empty at end of stream
    /// (every writer closed and the pipe drained; for a pty: the slave side closed).
    pub async fn read(&mut self, len: usize) -> io::Result<Vec<u8>> {
        if self.eof {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; len.max(1)];
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), &mut buf).map_err(io::Error::from)
            });
            match result {
                Ok(Ok(n)) => {
                    if n == 0 {
                        self.eof = true;
                    }
                    buf.truncate(n);
                    return Ok(buf);
                }
                // A pty master reads EIO once the last slave fd is closed: that is EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    self.eof = true;
                    return Ok(Vec::new());
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The write end of a process's stdin (a pipe, or a pty master).
#[derive(Debug)]
pub struct Writer {
    fd: AsyncFd<OwnedFd>,
}

impl Writer {
    pub fn new(fd: OwnedFd) -> io::Result<Writer> {
        set_nonblocking(&fd)?;
        Ok(Writer {
            // SAFETY: an OwnedFd is a valid open fd, owned by the AsyncFd until it is
            // dropped, and its as_raw_fd always returns that same fd.
            fd: unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }
                .map_err(io::Error::from)?,
        })
    }

    /// Writes all of `data`, waiting while the pipe is full.
    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            let result = guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), data).map_err(io::Error::from)
            });
            match result {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(total)
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.get_ref().as_raw_fd()
    }
}

/// A pipe whose both ends are close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// `/dev/null` opened read-write (for stdio the host did not ask for).
pub fn dev_null() -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(OwnedFd::from(f))
}

/// The window size a new terminal gets before its process runs: the process's
/// `consoleSize` when the host gave one, else 24x80. libcontainer opens the pty with a
/// 0x0 window, which programs read as "no size" (busybox's `stty size` then fails with a
/// stale errno); the host's ResizeTty comes only once the process already runs.
pub fn initial_size(console_size: Option<&oci_spec::runtime::Box>) -> (u16, u16) {
    const DEFAULT: (u16, u16) = (24, 80);
    let Some(b) = console_size else {
        return DEFAULT;
    };
    match (u16::try_from(b.height()), u16::try_from(b.width())) {
        (Ok(rows), Ok(cols)) if rows > 0 && cols > 0 => (rows, cols),
        _ => DEFAULT,
    }
}

/// Sets the window size of the pty whose master is `fd`.
pub fn resize(fd: i32, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives for the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_never_starts_at_0x0() {
        use oci_spec::runtime::BoxBuilder;
        assert_eq!(initial_size(None), (24, 80));
        let b = BoxBuilder::default()
            .height(33u64)
            .width(111u64)
            .build()
            .unwrap();
        assert_eq!(initial_size(Some(&b)), (33, 111));
        let zero = BoxBuilder::default()
            .height(0u64)
            .width(0u64)
            .build()
            .unwrap();
        assert_eq!(initial_size(Some(&zero)), (24, 80));
        let huge = BoxBuilder::default()
            .height(1u64 << 40)
            .width(80u64)
            .build()
            .unwrap();
        assert_eq!(initial_size(Some(&huge)), (24, 80));
    }

    #[test]
    fn resize_sets_the_window_of_a_pty() {
        let pty = nix::pty::openpty(None, None).unwrap();
        resize(pty.master.as_raw_fd(), 33, 111).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the live local.
        let rc = unsafe {
            libc::ioctl(
                pty.slave.as_raw_fd(),
                libc::TIOCGWINSZ,
                &mut ws as *mut libc::winsize,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 111));
    }

    #[test]
    fn read_len_is_capped() {
        assert_eq!(capped_len(0), MAX_READ_LEN);
        assert_eq!(capped_len(10), 10);
        assert_eq!(capped_len(u32::MAX), MAX_READ_LEN);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipe_reads_data_then_eof_after_writer_closes() {
        let (r, w) = pipe().unwrap();
        let mut reader = Reader::new(r).unwrap();
        let mut writer = Writer::new(w).unwrap();
        assert_eq!(writer.write_all(b"hello").await.unwrap(), 5);
        assert_eq!(reader.read(3).await.unwrap(), b"hel");
        assert_eq!(reader.read(100).await.unwrap(), b"lo");
        drop(writer);
        assert!(reader.read(100).await.unwrap().is_empty());
        assert!(reader.read(100).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writer_waits_for_a_slow_reader() {
        let (r, w) = pipe().unwrap();
        let mut reader = Reader::new(r).unwrap();
        let mut writer = Writer::new(w).unwrap();
        let data = vec![7u8; 256 * 1024];
        let expected = data.len();
        let write = async move { writer.write_all(&data).await.unwrap() };
        let read = async {
            let mut got = 0;
            while got < expected {
                got += reader.read(MAX_READ_LEN).await.unwrap().len();
            }
            got
        };
        let (w, r) = tokio::join!(write, read);
        assert_eq!((w, r), (expected, expected));
    }
}
