//! A process's streams between a local reader/writer and the agent, in the pull model:
//! stdout/stderr are read with ReadStdout/ReadStderr until EOF (backpressure reaches the
//! writer in the guest), stdin is written with WriteStdin and closed with CloseStdin.
//! Used by `hull run` (`run/`) and by the shim (`shim/io.rs`).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{AgentClient, AgentError, ProcessRef, Stream, MAX_READ};

/// Copies one output stream of the container's init process to `w` until EOF.
/// Returns the number of bytes. If `w` fails (hull's stdout closed), the stream is
/// still drained so the container never blocks on a full pipe.
pub async fn pump_output<W: AsyncWrite + Unpin>(
    agent: AgentClient,
    process: ProcessRef,
    stream: Stream,
    mut w: W,
) -> Result<u64, AgentError> {
    let mut total = 0u64;
    let mut idle = Duration::from_millis(1);
    let mut discard = false;
    loop {
        let (data, eof) = agent
            .read_stream(&process.container_id, &process.exec_id, stream, MAX_READ)
            .await?;
        if !data.is_empty() {
            total += data.len() as u64;
            idle = Duration::from_millis(1);
            if !discard {
                if let Err(e) = async {
                    w.write_all(&data).await?;
                    w.flush().await
                }
                .await
                {
                    tracing::warn!(stream = stream.name(), error = %e, "cannot write container output; discarding the rest");
                    discard = true;
                }
            }
        }
        if eof {
            return Ok(total);
        }
        if data.is_empty() {
            // An agent that answers "nothing yet" instead of waiting: back off.
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(50));
        }
    }
}

/// Copies `r` to the container's stdin until EOF, then closes it.
pub async fn pump_stdin<R: AsyncRead + Unpin>(
    agent: AgentClient,
    process: ProcessRef,
    mut r: R,
) -> Result<u64, AgentError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading stdin failed; closing the container's stdin");
                0
            }
        };
        if n == 0 {
            agent
                .close_stdin(&process.container_id, &process.exec_id)
                .await?;
            return Ok(total);
        }
        let mut off = 0;
        while off < n {
            let took = agent
                .write_stdin(&process.container_id, &process.exec_id, &buf[off..n])
                .await?;
            if took == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            off += took;
        }
        total += n as u64;
    }
}
