//! `hull monitor` scraped by a real HTTP client (curl) while hull pods run under
//! containerd: the sandbox count, each sandbox's host and guest memory, containers,
//! boot phases and agent RPC latencies are there, and they move when pods come and go,
//! a container fills guest memory, or an exec makes RPCs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use hull_tests::containerd::Containerd;
use hull_tests::output_text;

/// A running `hull monitor`, stopped (SIGTERM) when dropped.
struct Monitor {
    child: Child,
    url: String,
}

impl Monitor {
    fn start(c: &Containerd) -> Monitor {
        let mut child = c
            .state
            .hull()
            .args(["monitor", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .spawn()
            .expect("start hull monitor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read hull monitor's first line");
        let url = line
            .trim()
            .strip_prefix("hull monitor: serving ")
            .unwrap_or_else(|| panic!("hull monitor said {line:?}"))
            .to_string();
        Monitor { child, url }
    }

    /// `curl` of `path` on the monitor's address: (HTTP status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let base = self.url.trim_end_matches("/metrics");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
            .arg(format!("{base}{path}"))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl: {}", output_text(&out));
        let text = String::from_utf8(out.stdout).expect("utf-8 page");
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.parse().expect("status"), body.to_string())
    }

    /// `GET /metrics`, parsed: `name{labels}` -> value.
    fn scrape(&self) -> Scrape {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        Scrape::parse(&body)
    }

    /// Scrapes until `ready` holds (a sandbox's owner writes its RPC latencies within
    /// 200 ms of the RPC; containerd's reply may come first), for at most 10 s.
    fn scrape_until(&self, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = self.scrape();
            if ready(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} in 10 s:\n{}",
                s.page
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.child.wait().expect("wait for hull monitor")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Scrape {
    samples: BTreeMap<String, f64>,
    page: String,
}

impl Scrape {
    fn parse(page: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in page
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("not a value: {line:?}")),
            };
            assert!(
                samples.insert(key.to_string(), value).is_none(),
                "{key} twice in\n{page}"
            );
        }
        Scrape {
            samples,
            page: page.to_string(),
        }
    }

    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in\n{}", self.page))
    }

    fn has(&self, key: &str) -> bool {
        self.samples.contains_key(key)
    }

    fn of(&self, name: &str, sandbox: &str) -> f64 {
        self.get(&format!("{name}{{sandbox_id=\"{sandbox}\"}}"))
    }
}

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn a_real_scraper_sees_pods_memory_boots_and_rpcs_move() {
    if !hull_tests::containerd::require_containerd(
        "a_real_scraper_sees_pods_memory_boots_and_rpcs_move",
    ) {
        return;
    }
    let c = Containerd::start();
    let monitor = Monitor::start(&c);

    let empty = monitor.scrape();
    assert_eq!(empty.get("hull_sandboxes{state=\"live\"}"), 0.0);
    let boots_before = if empty.has("hull_boot_phase_seconds_count{phase=\"connected\"}") {
        empty.get("hull_boot_phase_seconds_count{phase=\"connected\"}")
    } else {
        0.0
    };
    let (code, _) = monitor.get("/no-such-page");
    assert_eq!(code, 404);

    c.run_detached("mon1", &["sleep", "1000"]);
    let s1 = c.sandbox_of("mon1");
    let rpc = |s: &Scrape, name: &str| {
        let key =
            format!("hull_agent_rpc_duration_seconds_count{{sandbox_id=\"{s1}\",rpc=\"{name}\"}}");
        if s.has(&key) {
            s.get(&key)
        } else {
            0.0
        }
    };
    let one = monitor.scrape_until("start_container latency", |s| {
        rpc(s, "start_container") >= 1.0
    });
    assert_eq!(
        one.get("hull_sandboxes{state=\"live\",backend=\"qemu\"}"),
        1.0
    );
    assert_eq!(one.of("hull_sandbox_up", &s1), 1.0);
    assert_eq!(one.of("hull_sandbox_containers", &s1), 1.0);
    // QEMU, virtiofsd and the vsock backend.
    assert!(
        one.of("hull_sandbox_host_processes", &s1) >= 3.0,
        "{}",
        one.page
    );
    let rss = one.of("hull_sandbox_host_rss_bytes", &s1);
    let pss = one.of("hull_sandbox_host_pss_bytes", &s1);
    assert!(rss > 16.0 * MIB && pss > 0.0 && pss <= rss, "{}", one.page);
    let total = one.of("hull_guest_memory_total_bytes", &s1);
    let used = one.of("hull_guest_memory_used_bytes", &s1);
    assert!(
        total > 128.0 * MIB && used > 0.0 && used < total,
        "{}",
        one.page
    );
    assert_eq!(
        one.get("hull_boot_phase_seconds_count{phase=\"connected\"}"),
        boots_before + 1.0
    );
    let connected = one.get(&format!(
        "hull_sandbox_boot_seconds{{sandbox_id=\"{s1}\",phase=\"connected\"}}"
    ));
    let ready = one.get(&format!(
        "hull_sandbox_boot_seconds{{sandbox_id=\"{s1}\",phase=\"agent_ready\"}}"
    ));
    assert!(connected >= ready && ready > 0.0, "{}", one.page);
    assert!(rpc(&one, "create_container") >= 1.0, "{}", one.page);

    // 48 MiB into the container's /dev/shm (a tmpfs: guest memory no one can reclaim).
    let fill = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "fill",
        "mon1",
        "dd",
        "if=/dev/zero",
        "of=/dev/shm/fill",
        "bs=1M",
        "count=48",
    ]);
    assert!(fill.status.success(), "{}", output_text(&fill));
    let filled = monitor.scrape_until("exec_process latency", |s| {
        rpc(s, "exec_process") > rpc(&one, "exec_process")
    });
    let grew = filled.of("hull_guest_memory_used_bytes", &s1) - used;
    assert!(
        grew >= 40.0 * MIB,
        "guest memory in use grew by {:.1} MiB only:\n{}",
        grew / MIB,
        filled.page
    );
    // Long polls are not timed (their time is the process's).
    assert!(
        !filled.page.contains("rpc=\"wait_process\""),
        "{}",
        filled.page
    );

    c.run_detached("mon2", &["sleep", "1000"]);
    let s2 = c.sandbox_of("mon2");
    let two = monitor.scrape();
    assert_eq!(
        two.get("hull_sandboxes{state=\"live\",backend=\"qemu\"}"),
        2.0
    );
    assert_eq!(two.of("hull_sandbox_up", &s2), 1.0);
    assert_eq!(
        two.get("hull_boot_phase_seconds_count{phase=\"connected\"}"),
        boots_before + 2.0
    );

    c.kill_and_remove("mon2");
    let after = monitor.scrape();
    assert_eq!(
        after.get("hull_sandboxes{state=\"live\",backend=\"qemu\"}"),
        1.0
    );
    assert!(
        !after.page.contains(&s2),
        "a deleted sandbox's series stay:\n{}",
        after.page
    );
    // The node's histogram counts boots, so a delete does not lower it.
    assert_eq!(
        after.get("hull_boot_phase_seconds_count{phase=\"connected\"}"),
        boots_before + 2.0
    );

    let status = monitor.stop();
    assert!(status.success(), "hull monitor on SIGTERM: {status:?}");
    c.kill_and_remove("mon1");
    c.assert_nothing_left();
}
