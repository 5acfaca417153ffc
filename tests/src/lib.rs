//! Helpers for hull's end-to-end tests: finding the built binaries and the guest image,
//! a private state dir per test, and leak checks against the real process table.
//!
//! Tests need real parts (QEMU, vhost-device-vsock, the guest kernel and initramfs).
//! Where one is missing a test says so and skips, unless `HULL_REQUIRE_E2E=1` (set by
//! scripts/test and CI), where a missing part is a failure: CI never passes by skipping.

pub mod cni;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod kube_stream;
pub mod run_helpers;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hull_runtime::config::{default_cache_dir, Config};
use hull_runtime::host;

/// The checkout's root (the workspace). From the manifest dir `cargo test` gives at
/// run time: a test binary reused from a shared target dir was maybe built in another
/// checkout, whose compile-time path may be gone.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("..")
}

/// Where the workspace's binaries were built: next to this test executable's `deps/`.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    dir.join(name)
}

/// The `hull` binary; panics with how to build it when absent.
pub fn hull_bin() -> PathBuf {
    let p = target_bin("hull");
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins; scripts/test does)",
        p.display()
    );
    p
}

/// What an end-to-end VM test needs, or why it cannot run here.
pub fn vm_prerequisites() -> Result<(), String> {
    let config = Config::default();
    let mut missing = Vec::new();
    if host::find_binary(&config.hypervisor.qemu).is_none() {
        missing.push("qemu-system-x86_64".to_string());
    }
    if host::find_binary(&config.hypervisor.vhost_vsock).is_none() {
        missing.push("vhost-device-vsock".to_string());
    }
    for f in [&config.guest.kernel, &config.guest.initrd] {
        if !f.exists() {
            missing.push(f.display().to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {} (run scripts/setup)",
            missing.join(", ")
        ))
    }
}

/// What `hull run` needs on top of a VM: virtiofsd and the demo image.
pub fn run_prerequisites() -> Result<(), String> {
    vm_prerequisites()?;
    let config = Config::default();
    let mut missing = Vec::new();
    if host::find_binary(&config.hypervisor.virtiofsd).is_none() {
        missing.push("virtiofsd".to_string());
    }
    if !demo_image().join("index.json").exists() {
        missing.push(format!("the demo image at {}", demo_image().display()));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {} (run scripts/setup)",
            missing.join(", ")
        ))
    }
}

/// The demo image built by scripts/demo-image.
pub fn demo_image() -> PathBuf {
    hull_runtime::image::images_dir(&default_cache_dir()).join("demo")
}

/// Like [`require_vm`], for tests of `hull run`.
pub fn require_run(test: &str) -> bool {
    require(test, run_prerequisites())
}

/// Returns true if the test may run; prints why not and returns false otherwise.
/// Panics instead when `HULL_REQUIRE_E2E=1`.
pub fn require_vm(test: &str) -> bool {
    require(test, vm_prerequisites())
}

/// Like [`require_vm`], for any list of prerequisites.
pub fn require(test: &str, prerequisites: Result<(), String>) -> bool {
    match prerequisites {
        Ok(()) => true,
        Err(why) => {
            if std::env::var("HULL_REQUIRE_E2E").as_deref() == Ok("1") {
                panic!("{test}: cannot run and HULL_REQUIRE_E2E=1: {why}");
            }
            eprintln!("SKIP {test}: {why}");
            false
        }
    }
}

pub fn guest_kernel() -> PathBuf {
    Config::default().guest.kernel
}

pub fn guest_initrd() -> PathBuf {
    Config::default().guest.initrd
}

pub fn floor_initrd() -> PathBuf {
    default_cache_dir().join("floor-initramfs.cpio")
}

/// A private state dir for one test, so leak checks see only that test's VMs.
pub struct TestState {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TestState {
    pub fn new() -> TestState {
        let dir = tempfile::Builder::new()
            .prefix("hull-test-")
            .tempdir_in("/tmp")
            .expect("temp state dir");
        TestState {
            path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    /// A state dir so deep that its VMs' socket paths do not fit in a socket address
    /// (108 bytes): hull must reach them all the same.
    pub fn deep() -> TestState {
        let dir = tempfile::Builder::new()
            .prefix("hull-test-")
            .tempdir_in("/tmp")
            .expect("temp state dir");
        let mut path = dir.path().to_path_buf();
        while path.as_os_str().len() < 110 {
            path.push("a-deep-state-dir");
        }
        std::fs::create_dir_all(&path).expect("deep state dir");
        TestState { _dir: dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `hull` command that uses this state dir.
    pub fn hull(&self) -> Command {
        let mut c = Command::new(hull_bin());
        c.env("HULL_STATE_DIR", self.path());
        c
    }

    /// A config whose state dir is this one.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.runtime.state_dir = self.path().to_path_buf();
        c
    }

    /// VM dirs left under `vms/`.
    pub fn leftover_vm_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.path().join("vms"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Processes whose command line mentions this state dir or whose working
    /// directory is in it (every VM process: its sockets and logs live there, and it
    /// runs in its VM's socket dir).
    pub fn processes(&self) -> Vec<(i32, String)> {
        let mut found = processes_mentioning(&self.path().to_string_lossy());
        for (pid, cmd) in processes_in_dir(self.path()) {
            if !found.iter().any(|(p, _)| *p == pid) {
                found.push((pid, cmd));
            }
        }
        found
    }

    /// Mount points under this state dir (volumes bind-mounted into a share).
    pub fn mounts(&self) -> Vec<PathBuf> {
        hull_runtime::sandbox::share::mounts_under(self.path())
    }

    /// Asserts nothing of this test's VMs is left: no process, no VM dir, no mount.
    /// Processes get a moment to finish dying (a SIGKILLed process is reaped
    /// asynchronously).
    pub fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.processes();
            let dirs = self.leftover_vm_dirs();
            let mounts = self.mounts();
            if procs.is_empty() && dirs.is_empty() && mounts.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("left behind: processes {procs:?}, VM dirs {dirs:?}, mounts {mounts:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Default for TestState {
    fn default() -> Self {
        Self::new()
    }
}

/// Live processes whose working directory is `dir` or under it (as the process sees
/// it: a jailed helper's socket dir keeps its host path inside the jail).
pub fn processes_in_dir(dir: &Path) -> Vec<(i32, String)> {
    processes_mentioning("")
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// Live (non-zombie) processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id() as i32;
    for e in rd.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains(needle) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .map(|s| s.trim_start().starts_with('Z'))
            .unwrap_or(false);
        if !zombie {
            found.push((pid, cmd));
        }
    }
    found
}

/// Whether `pid` is still a live process (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .map(|s| s.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// stdout + stderr of a finished command, for assertion messages.
/// A busybox httpd on port 80 serving `body` as /index.html (a container's script).
pub fn httpd(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www")
}

/// HTTP GET http://ip/index.html from the host's netns: the body.
pub fn http_get(ip: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:80").parse().ok()?,
        Duration::from_secs(5),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET /index.html HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.trim().to_string())
}

pub fn output_text(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until `f` returns Some, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the shell command line `cmdline` under `script`, which gives it a terminal,
/// with a timeout (SIGKILL after `timeout_secs`); the raw bytes of the session.
/// `script`'s own stdin is a pipe held open until it ends: at EOF of its stdin, script
/// writes an EOF character (^D) into the terminal, and a terminal still in canonical
/// mode queues that as a NUL byte, which turns into input once ctr or hull switch the
/// terminal to raw mode (the container's pty then echoes it as "^@").
pub fn in_terminal(cmdline: &str, timeout_secs: u32) -> Output {
    use std::process::Stdio;
    let mut child = Command::new("timeout")
        .args([
            "-s",
            "KILL",
            &timeout_secs.to_string(),
            "script",
            "-qec",
            cmdline,
            "/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let held_stdin = child.stdin.take();
    let out = child.wait_with_output().expect("script output");
    drop(held_stdin);
    out
}
