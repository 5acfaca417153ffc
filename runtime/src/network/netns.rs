//! Netlink work inside a pod's network namespace: a dedicated thread enters it with
//! `setns` (only that thread changes namespace; the shim's other threads stay in the
//! host's) and runs the work on its own current-thread runtime, so every netlink socket
//! and tap it opens lives in the pod's netns.

use std::fs::File;
use std::future::Future;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::NetworkError;

/// Runs `work` in a thread inside the netns `netns` (opened from `path`).
pub fn run_in<T, F, Fut>(netns: &File, path: &Path, work: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let fd = netns.try_clone().map_err(|source| NetworkError::Io {
        netns: path.to_path_buf(),
        source,
    })?;
    let owned = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("hull-netns".into())
        .spawn(move || {
            setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|source| NetworkError::NotANetns {
                path: owned.clone(),
                source,
            })?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|source| NetworkError::Io {
                    netns: owned,
                    source,
                })?;
            Ok(rt.block_on(work()))
        })
        .map_err(|source| NetworkError::Io {
            netns: path.to_path_buf(),
            source,
        })?;
    thread.join().map_err(|_| NetworkError::Io {
        netns: path.to_path_buf(),
        source: std::io::Error::other("the netns thread panicked"),
    })?
}
