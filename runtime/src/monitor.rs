//! `hull monitor`: the node's sandboxes as Prometheus metrics, on one HTTP endpoint.
//!
//! Every scrape of `GET /metrics` reads the state dir afresh (no state is kept between
//! scrapes, so a restarted monitor loses nothing):
//! 1. the sandboxes: each VM state dir, its record and whether its owner runs ([`inspect`]);
//! 2. the host memory of each sandbox's processes (VMM and helpers): RSS and PSS from
//!    `/proc/<pid>/smaps_rollup`;
//! 3. each live sandbox's agent, over a connection of the monitor's own through the
//!    sandbox's hybrid vsock: `GuestStats` (guest memory, containers), all at once, each
//!    with a deadline; a sandbox whose agent does not answer has `hull_sandbox_up 0`;
//! 4. what the owners wrote ([`crate::metrics`]): each sandbox's boot and agent RPC
//!    latencies, and the node's boot phase histograms.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::agent_client::{AgentClient, GuestStats};
use crate::gc::Status;
use crate::inspect;
use crate::metrics::exposition::{Family, Kind, CONTENT_TYPE};
use crate::metrics::{BootPhases, SandboxMetrics};
use crate::sandbox::leftovers;
use crate::sandbox::record::SandboxRecord;

/// The longest request head read; a scraper's is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("accept: {0}")]
    Accept(std::io::Error),
}

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// hull's state dir (`[runtime] state_dir`).
    pub state_dir: PathBuf,
    /// How long each agent has to answer `GuestStats`.
    pub agent_timeout: Duration,
}

/// Binds `addr` (port 0: any free port; the bound address is returned).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MonitorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MonitorError::Listen { addr, source })
}

/// Serves scrapes until the task is dropped; each connection in a task of its own.
pub async fn serve(listener: TcpListener, settings: MonitorSettings) -> Result<(), MonitorError> {
    loop {
        let (stream, peer) = listener.accept().await.map_err(MonitorError::Accept)?;
        let settings = settings.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &settings).await {
                tracing::debug!(%peer, error = %e, "scrape connection");
            }
        });
    }
}

/// One request, one response, then the connection closes.
async fn answer(mut stream: TcpStream, settings: &MonitorSettings) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_DEADLINE, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return respond(&mut stream, 408, "text/plain", "request timeout\n").await,
    };
    match route(&head) {
        Route::Metrics => {
            let page = render(&collect(settings).await);
            respond(&mut stream, 200, CONTENT_TYPE, &page).await
        }
        Route::Index => {
            respond(
                &mut stream,
                200,
                "text/plain",
                "hull monitor: the metrics are at /metrics\n",
            )
            .await
        }
        Route::NotFound => respond(&mut stream, 404, "text/plain", "not found\n").await,
        Route::BadMethod => respond(&mut stream, 405, "text/plain", "only GET\n").await,
        Route::BadRequest => respond(&mut stream, 400, "text/plain", "bad request\n").await,
    }
}

/// The request head (up to the blank line), bounded by [`MAX_REQUEST_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    BadMethod,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .unwrap_or_default();
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::BadMethod;
    }
    // Query strings (a scraper's `?format=...`) do not change the page.
    match target.split('?').next().unwrap_or_default() {
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::NotFound,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Timeout",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// One sandbox, as a scrape saw it.
#[derive(Debug, Clone)]
pub struct SandboxSample {
    pub id: String,
    pub backend: String,
    /// Whether its owner runs (`hull ps`'s STATE).
    pub status: Status,
    pub host: HostMemory,
    /// What the agent said; None when it was not asked (the sandbox is not live) or did
    /// not answer (then `agent_error` says why).
    pub guest: Option<GuestStats>,
    pub agent_error: Option<String>,
    /// What its owner wrote; None before the boot ended.
    pub metrics: Option<SandboxMetrics>,
}

/// Memory of a sandbox's host processes (the VMM and its helpers), summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostMemory {
    pub processes: u32,
    pub rss_bytes: u64,
    pub pss_bytes: u64,
}

/// Everything one scrape read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub sandboxes: Vec<SandboxSample>,
    pub boot_phases: BootPhases,
    pub took: Duration,
}

/// Reads the node: see the module's documentation.
pub async fn collect(settings: &MonitorSettings) -> Snapshot {
    let started = Instant::now();
    let state_dir = settings.state_dir.clone();
    // The /proc and state dir walk blocks: off the runtime's threads.
    let listed = tokio::task::spawn_blocking(move || {
        inspect::list(&state_dir)
            .into_iter()
            .map(|info| {
                let record = crate::gc::leftovers_of(&info.dir);
                let pids = record.map(|r| r.pids).unwrap_or_default();
                let host = host_memory(&pids, &info.dir);
                let metrics = SandboxMetrics::read(&info.dir).ok();
                (info, host, metrics)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();

    let asks = listed.iter().map(|(info, _, _)| {
        let live = matches!(info.status, Status::Live { .. });
        let settings = settings.clone();
        let id = info.id.clone();
        async move {
            if !live {
                return None;
            }
            Some(ask_agent(&settings, &id).await)
        }
    });
    let answers = futures_util::future::join_all(asks).await;

    let sandboxes = listed
        .into_iter()
        .zip(answers)
        .map(|((info, host, metrics), answer)| {
            let (guest, agent_error) = match answer {
                None => (None, None),
                Some(Ok(stats)) => (Some(stats), None),
                Some(Err(why)) => (None, Some(why)),
            };
            SandboxSample {
                id: info.id,
                backend: info.backend,
                status: info.status,
                host,
                guest,
                agent_error,
                metrics,
            }
        })
        .collect();
    let boot_phases = BootPhases::read(&settings.state_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the node's boot histograms are unreadable");
        BootPhases::default()
    });
    Snapshot {
        sandboxes,
        boot_phases,
        took: started.elapsed(),
    }
}

/// `GuestStats` from the agent of live sandbox `id`, or why not.
async fn ask_agent(settings: &MonitorSettings, id: &str) -> Result<GuestStats, String> {
    let record = SandboxRecord::load(&settings.state_dir, id).map_err(|e| e.to_string())?;
    let ask = async {
        let agent = AgentClient::connect(&record.vsock_uds, settings.agent_timeout)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        agent.guest_stats().await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(settings.agent_timeout + Duration::from_secs(1), ask).await {
        Ok(answer) => answer,
        Err(_) => Err(format!(
            "no answer in {:.1} s",
            settings.agent_timeout.as_secs_f64()
        )),
    }
}

/// RSS and PSS of the recorded processes that are still the sandbox's (a pid that was
/// reused by something else no longer names its dir).
fn host_memory(pids: &[u32], dir: &Path) -> HostMemory {
    let mut sum = HostMemory::default();
    for &pid in pids {
        if !leftovers::names_dir(pid, dir) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        sum.processes += 1;
        sum.rss_bytes += smaps_kib(&text, "Rss").unwrap_or(0) * 1024;
        sum.pss_bytes += smaps_kib(&text, "Pss").unwrap_or(0) * 1024;
    }
    sum
}

/// A `Name:  123 kB` field of /proc/<pid>/smaps_rollup.
fn smaps_kib(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, rest) = line.split_once(':')?;
        (key == name).then(|| rest.split_whitespace().next()?.parse().ok())?
    })
}

/// The page: every family with its samples (see docs/operations.md for what each means).
pub fn render(s: &Snapshot) -> String {
    let mut sandboxes = Family::new(
        "hull_sandboxes",
        Kind::Gauge,
        "Sandboxes on this node, by state (live: its owner runs; orphan: hull gc removes it) and backend.",
    );
    let mut by_state: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for sb in &s.sandboxes {
        *by_state
            .entry((sb.status.word(), sb.backend.as_str()))
            .or_default() += 1;
    }
    // A node with no sandboxes still says 0, so alerts and graphs see the drop.
    if by_state.is_empty() {
        sandboxes.sample(&[("state", "live")], 0.0);
    }
    for ((state, backend), n) in &by_state {
        sandboxes.sample(&[("state", state), ("backend", backend)], *n as f64);
    }

    let mut up = Family::new(
        "hull_sandbox_up",
        Kind::Gauge,
        "1 if the live sandbox's agent answered this scrape, else 0.",
    );
    let mut rss = Family::new(
        "hull_sandbox_host_rss_bytes",
        Kind::Gauge,
        "Resident memory of the sandbox's host processes (VMM and helpers), summed.",
    );
    let mut pss = Family::new(
        "hull_sandbox_host_pss_bytes",
        Kind::Gauge,
        "Proportional set size of the sandbox's host processes (VMM and helpers), summed.",
    );
    let mut procs = Family::new(
        "hull_sandbox_host_processes",
        Kind::Gauge,
        "Host processes of the sandbox (VMM and helpers) still running.",
    );
    let mut guest_total = Family::new(
        "hull_guest_memory_total_bytes",
        Kind::Gauge,
        "The guest's MemTotal, as its agent reports it.",
    );
    let mut guest_used = Family::new(
        "hull_guest_memory_used_bytes",
        Kind::Gauge,
        "The guest's memory in use: MemTotal - MemAvailable, as its agent reports them.",
    );
    let mut containers = Family::new(
        "hull_sandbox_containers",
        Kind::Gauge,
        "Containers in the sandbox, as its agent reports them.",
    );
    let mut boot = Family::new(
        "hull_sandbox_boot_seconds",
        Kind::Gauge,
        "When the sandbox's boot reached each phase, in seconds from the hypervisor's launch.",
    );
    let mut rpc = Family::new(
        "hull_agent_rpc_duration_seconds",
        Kind::Histogram,
        "Latency of the agent RPCs the sandbox's owner made, per RPC (the long polls, WaitProcess, GetOomEvent and the stdio streams, are not timed).",
    );
    for sb in &s.sandboxes {
        let id = [("sandbox_id", sb.id.as_str())];
        if matches!(sb.status, Status::Live { .. }) {
            up.sample(&id, if sb.guest.is_some() { 1.0 } else { 0.0 });
        }
        if sb.host.processes > 0 {
            rss.sample(&id, sb.host.rss_bytes as f64);
            pss.sample(&id, sb.host.pss_bytes as f64);
        }
        procs.sample(&id, f64::from(sb.host.processes));
        if let Some(g) = &sb.guest {
            guest_total.sample(&id, g.mem_total_bytes as f64);
            guest_used.sample(&id, (g.mem_total_bytes - g.mem_available_bytes) as f64);
            containers.sample(&id, f64::from(g.containers));
        }
        if let Some(m) = &sb.metrics {
            for (phase, seconds) in m.boot.phases() {
                boot.sample(&[("sandbox_id", &sb.id), ("phase", phase)], seconds);
            }
            for (name, h) in &m.rpc {
                rpc.histogram(&[("sandbox_id", &sb.id), ("rpc", name)], h);
            }
        }
    }

    let mut phases = Family::new(
        "hull_boot_phase_seconds",
        Kind::Histogram,
        "Seconds from the hypervisor's launch to each boot phase, over every sandbox booted on this node since its state dir was made.",
    );
    for (phase, h) in &s.boot_phases.phases {
        phases.histogram(&[("phase", phase)], h);
    }
    let mut scrape = Family::new(
        "hull_monitor_scrape_duration_seconds",
        Kind::Gauge,
        "How long this scrape took to read the node.",
    );
    scrape.sample(&[], s.took.as_secs_f64());

    let mut out = String::new();
    for family in [
        &sandboxes,
        &up,
        &rss,
        &pss,
        &procs,
        &guest_total,
        &guest_used,
        &containers,
        &boot,
        &phases,
        &rpc,
        &scrape,
    ] {
        family.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{BootSeconds, Histogram};

    #[test]
    fn requests_are_routed_by_method_and_path() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::Index);
        assert_eq!(route(b"GET /other HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }

    #[test]
    fn smaps_fields_are_read() {
        let text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  2048 kB\nPss:   1024 kB\nPss_Anon: 12 kB\n";
        assert_eq!(smaps_kib(text, "Rss"), Some(2048));
        assert_eq!(smaps_kib(text, "Pss"), Some(1024));
        assert_eq!(smaps_kib(text, "Swap"), None);
    }

    #[test]
    fn this_process_is_measured_when_it_names_the_dir() {
        let me = std::process::id();
        let cwd = std::env::current_dir().unwrap();
        let mine = host_memory(&[me], &cwd);
        assert_eq!(mine.processes, 1);
        assert!(mine.rss_bytes > 0 && mine.pss_bytes > 0, "{mine:?}");
        // A pid that does not name the dir is someone else's.
        assert_eq!(
            host_memory(&[me], Path::new("/nonexistent-hull-dir")),
            HostMemory::default()
        );
    }

    fn sample(id: &str, status: Status) -> SandboxSample {
        let live = matches!(status, Status::Live { .. });
        let mut h = Histogram::new(crate::metrics::RPC_BUCKETS);
        h.observe(0.002);
        SandboxSample {
            id: id.into(),
            backend: "qemu".into(),
            status,
            host: HostMemory {
                processes: 3,
                rss_bytes: 4096,
                pss_bytes: 2048,
            },
            guest: live.then_some(GuestStats {
                mem_total_bytes: 1000,
                mem_available_bytes: 400,
                containers: 2,
            }),
            agent_error: None,
            metrics: Some(SandboxMetrics {
                boot: BootSeconds {
                    backend: "qemu".into(),
                    processes: 0.1,
                    kernel: None,
                    init: Some(1.0),
                    agent_ready: 1.5,
                    connected: 1.6,
                },
                rpc: [("check".to_string(), h)].into(),
            }),
        }
    }

    #[test]
    fn the_page_has_every_family_once_with_its_samples() {
        let mut phases = BootPhases::default();
        let live = Status::Live { owner: 1 };
        let orphan = Status::Orphan { owner: Some(2) };
        phases.observe(&sample("a", live).metrics.unwrap().boot);
        let page = render(&Snapshot {
            sandboxes: vec![sample("a", live), sample("b", orphan)],
            boot_phases: phases,
            took: Duration::from_millis(5),
        });
        for line in [
            "hull_sandboxes{state=\"live\",backend=\"qemu\"} 1",
            "hull_sandboxes{state=\"orphan\",backend=\"qemu\"} 1",
            "hull_sandbox_up{sandbox_id=\"a\"} 1",
            "hull_sandbox_host_rss_bytes{sandbox_id=\"b\"} 4096",
            "hull_guest_memory_used_bytes{sandbox_id=\"a\"} 600",
            "hull_sandbox_containers{sandbox_id=\"a\"} 2",
            "hull_sandbox_boot_seconds{sandbox_id=\"a\",phase=\"connected\"} 1.6",
            "hull_boot_phase_seconds_count{phase=\"init\"} 1",
            "hull_agent_rpc_duration_seconds_bucket{sandbox_id=\"a\",rpc=\"check\",le=\"0.0025\"} 1",
            "hull_monitor_scrape_duration_seconds 0.005",
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        // An orphan's agent is not asked, so it has no up sample.
        assert!(
            !page.contains("hull_sandbox_up{sandbox_id=\"b\"}"),
            "{page}"
        );
        let types: Vec<&str> = page.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{page}");
        assert!(!page.contains("hull_boot_phase_seconds_count{phase=\"kernel\"}"));
    }

    #[test]
    fn an_empty_node_says_zero_sandboxes() {
        let page = render(&Snapshot {
            sandboxes: vec![],
            boot_phases: BootPhases::default(),
            took: Duration::ZERO,
        });
        assert!(
            page.contains("hull_sandboxes{state=\"live\"} 0\n"),
            "{page}"
        );
        assert!(!page.contains("hull_sandbox_up"), "{page}");
    }
}
