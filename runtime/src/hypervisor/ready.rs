//! Waiting for a helper process to be ready: its listening socket appears, or it exits
//! (then the error carries its exit status and the tail of its stderr).

use std::path::Path;
use std::time::{Duration, Instant};

use super::HypervisorError;
use crate::child::HelperProcess;

/// Waits until `path` exists and listens (a helper created its listening socket),
/// failing early if the helper exits. The file appears at bind(), a moment before
/// listen(): a client connecting in between is refused, so the socket's state is read
/// from /proc/net/unix (never by connecting: a vhost-user backend serves one client
/// and exits when it leaves).
pub async fn wait_for_socket(
    path: &Path,
    helper: &mut HelperProcess,
    timeout: Duration,
) -> Result<(), HypervisorError> {
    let start = Instant::now();
    loop {
        if path.exists() && listening(path) != Some(false) {
            return Ok(());
        }
        if let Some(status) = helper.try_status() {
            return Err(HypervisorError::NotReady {
                what: helper.name(),
                waited: start.elapsed(),
                detail: format!(
                    ": it exited with {}\n{}",
                    crate::child::describe_status(&status),
                    helper.stderr_tail(10)
                ),
            });
        }
        if start.elapsed() > timeout {
            return Err(HypervisorError::NotReady {
                what: helper.name(),
                waited: timeout,
                detail: format!(" (no socket at {})", path.display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `__SO_ACCEPTCON` in /proc/net/unix's Flags column: the socket listens.
const ACCEPTCON: u32 = 0x0001_0000;

/// Whether the socket bound at `path` listens, from this network namespace's
/// /proc/net/unix: `Some(false)` while it is bound but not listening yet, `None` when
/// no entry names it (bound elsewhere, or by its bare name in a dir too deep for a
/// socket address, which also matches) or the table cannot be read.
fn listening(path: &Path) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    listening_in(&table, path)
}

fn listening_in(table: &str, path: &Path) -> Option<bool> {
    let full = path.to_string_lossy();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut seen = None;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(flags), Some(bound)) = (cols.get(3), cols.get(7)) else {
            continue;
        };
        if *bound != full && Some(*bound) != name.as_deref() {
            continue;
        }
        let listens = u32::from_str_radix(flags, 16).is_ok_and(|f| f & ACCEPTCON != 0);
        if listens {
            return Some(true);
        }
        seen = Some(false);
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00000000 0001 01 101 /run/vm/a.sock
0000000000000000: 00000002 00000000 00010000 0001 01 102 /run/vm/b.sock
0000000000000000: 00000002 00000000 00010000 0001 01 103 c.sock
0000000000000000: 00000003 00000000 00000000 0001 03 104
";

    #[test]
    fn bound_but_not_listening_is_told_apart() {
        assert_eq!(
            listening_in(TABLE, Path::new("/run/vm/a.sock")),
            Some(false)
        );
        assert_eq!(listening_in(TABLE, Path::new("/run/vm/b.sock")), Some(true));
        assert_eq!(
            listening_in(TABLE, Path::new("/deep/dir/c.sock")),
            Some(true),
            "bound by its bare name"
        );
        assert_eq!(listening_in(TABLE, Path::new("/run/vm/none.sock")), None);
    }

    #[tokio::test]
    async fn a_real_listener_is_seen_listening() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("l.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert_eq!(listening(&path), Some(true));
    }
}
