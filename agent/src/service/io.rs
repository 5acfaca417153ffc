//! Process I/O RPCs (pull model): a pipe is read only when the host asks, at most
//! `stdio::MAX_READ_LEN` bytes at a time, so a slow host blocks the writer in the guest
//! instead of making the agent buffer.

use hull_proto::*;

use super::process::lookup_any;
use super::{Service, ServiceError};
use crate::container::stdio::{capped_len, Reader};

pub async fn do_write_stdin(
    svc: &Service,
    req: &WriteStreamRequest,
) -> Result<WriteStreamResponse, ServiceError> {
    let p = lookup_any(svc, &req.container_id, &req.exec_id)?;
    let mut stdin = p.stdin.lock().await;
    let w = stdin.as_mut().ok_or_else(|| {
        ServiceError::FailedPrecondition("stdin is closed or was not requested".into())
    })?;
    let n = w.write_all(&req.data).await.map_err(|e| {
        if e.raw_os_error() == Some(libc::EPIPE) {
            ServiceError::FailedPrecondition("the process closed its stdin".into())
        } else {
            ServiceError::internal("write stdin", e)
        }
    })?;
    let mut resp = WriteStreamResponse::new();
    resp.len = u32::try_from(n).unwrap_or(u32::MAX);
    Ok(resp)
}

async fn read(
    stream: &tokio::sync::Mutex<Option<Reader>>,
    len: u32,
) -> Result<ReadStreamResponse, ServiceError> {
    let mut guard = stream.lock().await;
    let mut resp = ReadStreamResponse::new();
    match guard.as_mut() {
        None => resp.eof = true,
        Some(r) => {
            let data = r
                .read(capped_len(len))
                .await
                .map_err(|e| ServiceError::internal("read output", e))?;
            resp.eof = data.is_empty();
            resp.data = data;
        }
    }
    if resp.eof {
        // Drained: the pipe's read end is closed now, not when the container goes (a
        // long-lived container's execs would otherwise use up the agent's fds); later
        // reads answer eof from the None above.
        *guard = None;
    }
    Ok(resp)
}

pub async fn do_read_stdout(
    svc: &Service,
    req: &ReadStreamRequest,
) -> Result<ReadStreamResponse, ServiceError> {
    let p = lookup_any(svc, &req.container_id, &req.exec_id)?;
    read(&p.stdout, req.len).await
}

pub async fn do_read_stderr(
    svc: &Service,
    req: &ReadStreamRequest,
) -> Result<ReadStreamResponse, ServiceError> {
    let p = lookup_any(svc, &req.container_id, &req.exec_id)?;
    read(&p.stderr, req.len).await
}
