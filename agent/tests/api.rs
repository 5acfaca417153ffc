//! The agent's API over a unix socket, against the real binary.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{ctx, listen, Agent, TempDir, PATIENCE};
use hull_proto::health_check_response::ServingStatus;
use hull_proto::*;
use ttrpc::Code;

#[tokio::test]
async fn check_says_serving() {
    let mut agent = Agent::start(&[]);
    let client = agent.client().await;
    let resp = client.check(ctx(), &CheckRequest::new()).await.unwrap();
    assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));
}

#[tokio::test]
async fn version_reports_agent_api_kernel_and_uptime() {
    let mut agent = Agent::start(&[]);
    let client = agent.client().await;
    let v = client.version(ctx(), &CheckRequest::new()).await.unwrap();
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.api_version, API_VERSION);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(v.kernel_release, release.trim());
    assert!(v.uptime_ms > 0);
}

/// Asserts that a call failed with UNIMPLEMENTED and a message naming the RPC.
fn assert_unimplemented<T: std::fmt::Debug>(rpc: &str, result: ttrpc::Result<T>) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => {
            assert_eq!(status.code(), Code::UNIMPLEMENTED, "{rpc}: {status:?}");
            assert!(
                status.message().contains(rpc),
                "{rpc}: {:?}",
                status.message()
            );
        }
        other => panic!("{rpc}: expected UNIMPLEMENTED, got {other:?}"),
    }
}

/// The guest network RPCs check their requests; the listing ones are not implemented.
/// (UpdateRoutes is not called here: these tests run the agent on the host, where it
/// would replace the host's routes.)
#[tokio::test]
async fn network_requests_are_checked_and_listings_unimplemented() {
    let mut agent = Agent::start(&[]);
    let c = agent.client().await;
    assert_invalid(
        "UpdateInterface",
        "without an interface",
        c.update_interface(ctx(), &UpdateInterfaceRequest::new())
            .await,
    );
    assert_unimplemented(
        "ListInterfaces",
        c.list_interfaces(ctx(), &Empty::new()).await,
    );
    assert_unimplemented("ListRoutes", c.list_routes(ctx(), &Empty::new()).await);
    // The agent is still fine afterwards.
    c.check(ctx(), &CheckRequest::new()).await.unwrap();
}

#[tokio::test]
async fn destroy_sandbox_replies_then_the_process_exits() {
    let mut agent = Agent::start(&[]);
    let client = agent.client().await;
    let mut req = DestroySandboxRequest::new();
    req.timeout_secs = 1;
    client.destroy_sandbox(ctx(), &req).await.unwrap();
    let status = agent.wait_exit().await;
    assert!(status.success(), "{status}; log:\n{}", agent.log_text());
    assert!(!agent.socket.exists(), "socket left behind");
}

#[tokio::test]
async fn sigterm_stops_the_process_cleanly() {
    let mut agent = Agent::start(&[]);
    agent.client().await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait_exit().await;
    assert!(status.success(), "{status}; log:\n{}", agent.log_text());
    assert!(!agent.socket.exists(), "socket left behind");
}

/// Accepts one connection on `listener` and returns everything written to it.
fn read_announcement(listener: std::os::unix::net::UnixListener) -> String {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no announcement");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

#[tokio::test]
async fn announces_readiness_once_listening() {
    let dir = TempDir::new();
    let announce = dir.0.join("announce.sock");
    let listener = listen(&announce);
    let arg = format!("unix://{}", announce.display());
    let mut agent = Agent::start_in(dir, &["--announce", &arg]);
    let line = tokio::task::spawn_blocking(move || read_announcement(listener))
        .await
        .unwrap();
    assert_eq!(line, format!("{ANNOUNCE_PREFIX} {API_VERSION}\n"));
    // Announced means listening.
    let c = agent.client().await;
    c.check(ctx(), &CheckRequest::new()).await.unwrap();
}

#[tokio::test]
async fn announce_retries_until_the_host_listens() {
    let dir = TempDir::new();
    let announce = dir.0.join("announce.sock");
    let arg = format!("unix://{}", announce.display());
    let mut agent = Agent::start_in(dir, &["--announce", &arg]);
    // The agent is up (and its first announce attempts fail) before the host listens.
    agent.client().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let listener = listen(&announce);
    let line = tokio::task::spawn_blocking(move || read_announcement(listener))
        .await
        .unwrap();
    assert_eq!(line, format!("{ANNOUNCE_PREFIX} {API_VERSION}\n"));
    assert!(
        agent.log_text().contains("announce failed"),
        "{}",
        agent.log_text()
    );
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let dir = TempDir::new();
    // A socket file nobody listens on, as a crashed agent leaves it. Made with mknod,
    // not bind+close: a listening fd, however briefly open, is inherited by any child
    // another test thread forks in that window, and a client could then connect to
    // that phantom listener and be reset when the child execs.
    nix::sys::stat::mknod(
        &dir.0.join("agent.sock"),
        nix::sys::stat::SFlag::S_IFSOCK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .expect("mknod a stale socket");
    let mut agent = Agent::start_in(dir, &[]);
    let c = agent.client().await;
    if let Err(e) = c.check(ctx(), &CheckRequest::new()).await {
        panic!("check failed: {e:?}; agent log:\n{}", agent.log_text());
    }
}

#[tokio::test]
async fn a_live_socket_is_not_stolen() {
    let mut first = Agent::start(&[]);
    first.client().await;
    let socket = first.socket.clone();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_hull-agent"))
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = second.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("hull-agent: FATAL:") && err.contains("in use"),
        "{err}"
    );
    // The first agent still serves.
    first
        .client()
        .await
        .check(ctx(), &CheckRequest::new())
        .await
        .unwrap();
}

#[test]
fn bad_arguments_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hull-agent"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
}

#[test]
fn version_flag_prints_the_version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hull-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

/// Asserts that a call failed with INVALID_ARGUMENT naming the bad field.
fn assert_invalid<T: std::fmt::Debug>(rpc: &str, what: &str, result: ttrpc::Result<T>) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => {
            assert_eq!(status.code(), Code::INVALID_ARGUMENT, "{rpc}: {status:?}");
            assert!(
                status.message().contains(what),
                "{rpc}: {:?}",
                status.message()
            );
        }
        other => panic!("{rpc}: expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test]
async fn container_rpcs_check_the_container_id() {
    let mut agent = Agent::start(&[]);
    let c = agent.client().await;
    macro_rules! check {
        ($($method:ident($req:ty)),* $(,)?) => {$(
            assert_invalid(stringify!($method), "container id", c.$method(ctx(), &<$req>::new()).await);
        )*};
    }
    check!(
        create_container(CreateContainerRequest),
        start_container(StartContainerRequest),
        remove_container(RemoveContainerRequest),
        pause_container(ContainerRequest),
        resume_container(ContainerRequest),
        update_container(UpdateContainerRequest),
        stats_container(ContainerRequest),
        list_processes(ContainerRequest),
        exec_process(ExecProcessRequest),
        signal_process(SignalProcessRequest),
        wait_process(ProcessRequest),
        resize_tty(ResizeTtyRequest),
        close_stdin(ProcessRequest),
        write_stdin(WriteStreamRequest),
        read_stdout(ReadStreamRequest),
        read_stderr(ReadStreamRequest),
    );
    let mut req = CreateContainerRequest::new();
    req.container_id = "c1".into();
    req.oci_spec_json = br#"{"ociVersion":"1.0.2","process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"/x"},"linux":{}}"#.to_vec();
    assert_invalid(
        "CreateContainer",
        "args is empty",
        c.create_container(ctx(), &req).await,
    );
    let mut req = ProcessRequest::new();
    req.container_id = "nope".into();
    match c.wait_process(ctx(), &req).await {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(s.code(), Code::NOT_FOUND, "{s:?}"),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
}

/// The agent is the policy point of `hull debug exec`: without CreateSandbox's
/// debug_exec, a debug process (empty container id) is refused whatever the request.
#[tokio::test]
async fn debug_processes_are_refused_without_debug_exec() {
    let mut agent = Agent::start(&[]);
    let c = agent.client().await;
    let mut req = ExecProcessRequest::new();
    req.exec_id = "dbg1".into();
    req.process_json = br#"{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec();
    match c.exec_process(ctx(), &req).await {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), Code::PERMISSION_DENIED, "{s:?}");
            assert!(
                s.message().contains("debug processes are not allowed"),
                "{s:?}"
            );
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    let mut req = ProcessRequest::new();
    req.exec_id = "dbg1".into();
    match c.wait_process(ctx(), &req).await {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(s.code(), Code::NOT_FOUND, "{s:?}"),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
}

/// DebugCrashAgent (fault injection) is a debug request: refused without debug_exec,
/// and the agent lives on.
#[tokio::test]
async fn crashing_the_agent_is_refused_without_debug_exec() {
    let mut agent = Agent::start(&[]);
    let c = agent.client().await;
    match c.debug_crash_agent(ctx(), &Empty::new()).await {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), Code::PERMISSION_DENIED, "{s:?}");
            assert!(
                s.message().contains("debug processes are not allowed"),
                "{s:?}"
            );
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    c.check(ctx(), &CheckRequest::new())
        .await
        .expect("the agent still answers");
}

#[tokio::test]
async fn pod_namespaces_need_a_known_sandbox_container() {
    let mut agent = Agent::start(&[]);
    let c = agent.client().await;
    let spec = br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"/x"},"linux":{"namespaces":[{"type":"ipc"}]}}"#;
    let req = |sandbox: &str, namespaces: &[&str]| {
        let mut req = CreateContainerRequest::new();
        req.container_id = "hull-api-test-member".into();
        req.oci_spec_json = spec.to_vec();
        req.sandbox_container_id = sandbox.into();
        req.sandbox_namespaces = namespaces.iter().map(|n| n.to_string()).collect();
        req
    };
    let r = c.create_container(ctx(), &req("", &["ipc"])).await;
    assert_invalid("CreateContainer", "without sandbox_container_id", r);
    let r = c
        .create_container(ctx(), &req("pause1", &["ipc", "mnt"]))
        .await;
    assert_invalid("CreateContainer", "only ipc, uts and pid", r);
    match c
        .create_container(ctx(), &req("pause1", &["ipc", "uts"]))
        .await
    {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), Code::NOT_FOUND, "{s:?}");
            assert!(s.message().contains("sandbox container pause1"), "{s:?}");
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
}

#[tokio::test]
async fn oom_long_poll_is_cancelled_by_destroy_sandbox() {
    let mut agent = Agent::start(&[]);
    let c = agent.client().await;
    let poll = {
        let c = c.clone();
        tokio::spawn(async move { c.get_oom_event(ctx(), &GetOomEventRequest::new()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    c.destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .unwrap();
    match poll.await.unwrap() {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(s.code(), Code::CANCELLED, "{s:?}"),
        other => panic!("expected CANCELLED, got {other:?}"),
    }
}
