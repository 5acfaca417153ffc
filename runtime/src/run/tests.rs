//! The host's side of the I/O contract, against a fake agent speaking the real ttrpc
//! API over a Unix socket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hull_proto::*;
use ttrpc::r#async::TtrpcContext;

use crate::agent_client::pump::{pump_output, pump_stdin};
use crate::agent_client::{AgentClient, AgentError, ProcessRef, Stream};

#[derive(Default)]
struct Fake {
    stdout: Vec<u8>,
    stdout_pos: Mutex<usize>,
    /// Answer every other read with "nothing yet".
    stutter: bool,
    reads: Mutex<u64>,
    /// Reply with more data than asked (a hostile agent).
    oversize: bool,
    stdin: Mutex<Vec<u8>>,
    stdin_closed: Mutex<bool>,
}

#[async_trait]
impl AgentService for Fake {
    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let mut r = ReadStreamResponse::new();
        if self.oversize {
            r.data = vec![b'x'; req.len as usize + 1];
            return Ok(r);
        }
        {
            let mut n = self.reads.lock().expect("lock");
            *n += 1;
            if self.stutter && (*n).is_multiple_of(2) {
                return Ok(r);
            }
        }
        let mut pos = self.stdout_pos.lock().expect("lock");
        let end = (*pos + req.len as usize).min(self.stdout.len());
        r.data = self.stdout[*pos..end].to_vec();
        *pos = end;
        r.eof = r.data.is_empty();
        Ok(r)
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        _req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let mut r = ReadStreamResponse::new();
        r.eof = true;
        Ok(r)
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        // Take at most 1000 bytes: the host must resend the rest.
        let n = req.data.len().min(1000);
        self.stdin
            .lock()
            .expect("lock")
            .extend_from_slice(&req.data[..n]);
        let mut r = WriteStreamResponse::new();
        r.len = n as u32;
        Ok(r)
    }

    async fn close_stdin(&self, _: &TtrpcContext, _req: ProcessRequest) -> ttrpc::Result<Empty> {
        *self.stdin_closed.lock().expect("lock") = true;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        _req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let mut r = WaitProcessResponse::new();
        r.status = 137;
        r.oom_killed = true;
        Ok(r)
    }
}

struct Served {
    _dir: tempfile::TempDir,
    server: ttrpc::r#async::Server,
    client: AgentClient,
}

async fn serve(fake: Arc<Fake>) -> Served {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("agent.sock");
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", sock.display()))
        .expect("bind")
        .register_service(hull_proto::agent_ttrpc::create_agent_service(fake));
    server.start().await.expect("start");
    let stream = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    Served {
        _dir: dir,
        server,
        client: AgentClient::from_stream(stream, Duration::from_secs(5)),
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn output_is_copied_byte_exact_until_eof() {
    let data = pattern(3 * 1024 * 1024 + 17);
    let fake = Arc::new(Fake {
        stdout: data.clone(),
        stutter: true,
        ..Default::default()
    });
    let mut s = serve(fake).await;
    let mut out = Vec::new();
    let n = pump_output(
        s.client.clone(),
        ProcessRef::init("c1"),
        Stream::Stdout,
        &mut out,
    )
    .await
    .expect("pump");
    assert_eq!(n as usize, data.len());
    assert!(out == data, "output differs");
    let n = pump_output(
        s.client.clone(),
        ProcessRef::init("c1"),
        Stream::Stderr,
        Vec::new(),
    )
    .await
    .expect("stderr");
    assert_eq!(n, 0);
    let exit = s.client.wait_process("c1", "").await.expect("wait");
    assert_eq!((exit.status, exit.oom_killed), (137, true));
    let _ = s.server.shutdown().await;
}

#[tokio::test]
async fn stdin_is_delivered_whole_across_partial_writes_then_closed() {
    let fake = Arc::new(Fake::default());
    let mut s = serve(fake.clone()).await;
    let data = pattern(100_000);
    let n = pump_stdin(s.client.clone(), ProcessRef::init("c1"), &data[..])
        .await
        .expect("stdin");
    assert_eq!(n as usize, data.len());
    assert!(*fake.stdin.lock().expect("lock") == data, "stdin differs");
    assert!(*fake.stdin_closed.lock().expect("lock"));
    let _ = s.server.shutdown().await;
}

#[tokio::test]
async fn a_reply_larger_than_asked_is_refused() {
    let fake = Arc::new(Fake {
        oversize: true,
        ..Default::default()
    });
    let mut s = serve(fake).await;
    let err = pump_output(
        s.client.clone(),
        ProcessRef::init("c1"),
        Stream::Stdout,
        Vec::new(),
    )
    .await
    .expect_err("oversize");
    assert!(matches!(err, AgentError::BadReply { .. }), "{err}");
    let _ = s.server.shutdown().await;
}

#[tokio::test]
async fn unimplemented_rpcs_are_named_in_the_error() {
    let fake = Arc::new(Fake::default());
    let mut s = serve(fake).await;
    let err = s
        .client
        .create_container("c1", &Default::default(), &[], &Default::default())
        .await
        .expect_err("unimplemented");
    assert!(err.to_string().contains("create_container"), "{err}");
    let _ = s.server.shutdown().await;
}
