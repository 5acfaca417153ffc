//! The warm pool: VMs booted ahead of need (`[pool] size`), each held by a keeper
//! process that becomes the shim of the pod that takes it.
//!
//! A keeper is the shim binary run as `containerd-shim-hull-v2 pool-keep ID`
//! (`crate::shim::keeper`). It boots a VM of the default size with no pod data in it,
//! then waits on `<state_dir>/pool/ID.sock`. containerd's `start` of a new task or pod
//! takes one ([`claim`]): it sends the shim's flags (namespace, id, addresses, bundle)
//! and the keeper starts serving the Task API on the shim socket with that VM already
//! booted. The VM's processes never change owner: they stay the children of the
//! keeper, now the pod's shim, which is why no state has to be handed over.
//!
//! The directory holds, per keeper: `ID.json` (its pid and start time, written by
//! whoever spawned it, so a booting keeper is counted), `ID.sock` (once its VM is
//! ready: the keeper is idle) and `ID.log` (its log until it is taken). A keeper that
//! is taken, drained or dies removes its entries; [`members`] removes those of a dead
//! one. [`fill`] tops the pool up to its size; it runs after every take, so the pool
//! refills in the background.
//!
//! Nothing here logs above debug: containerd reads the shim `start`'s stdout and stderr
//! together as the shim's address, so a line there would break the task's start.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sandbox::leftovers::Owner;

/// The shim sub-command a keeper runs as.
pub const KEEPER_COMMAND: &str = "pool-keep";
/// Under the runtime's state dir.
pub const POOL_DIR: &str = "pool";
/// The cgroup (under each hierarchy's root) idle pool VMs are charged to.
pub const POOL_CGROUP: &str = "hull-pool";

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start a pool VM keeper ({exe}): {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PoolError {
    let path = path.to_path_buf();
    move |source| PoolError::Io { what, path, source }
}

/// The pool's directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(POOL_DIR)
}

/// A keeper's files in the pool directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    dir: PathBuf,
}

impl Entry {
    pub fn new(state_dir: &Path, id: &str) -> Entry {
        Entry {
            id: id.to_string(),
            dir: dir(state_dir),
        }
    }

    /// `ID.json`: who keeps the VM.
    pub fn record(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.id))
    }

    /// `ID.sock`: present while the VM is idle and can be taken.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.id))
    }

    /// `ID.log`: the keeper's log until its VM is taken.
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.id))
    }

    /// Removes the entry's files (each may be gone already).
    pub fn remove(&self) {
        for path in [self.socket(), self.record(), self.log()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot remove a pool file")
                }
            }
        }
    }

    /// Takes the VM out of the pool: nobody can claim or count it any more.
    pub fn leave(&self) {
        for path in [self.socket(), self.record()] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A pool VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl std::fmt::Display for VmSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}MiB", self.vcpus, self.memory_mib)
    }
}

/// What `ID.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRecord {
    pub owner: Owner,
    pub size: VmSize,
}

/// A live keeper.
#[derive(Debug, Clone)]
pub struct Member {
    pub entry: Entry,
    pub pid: u32,
    /// Its VM is ready and not taken (else it is still booting).
    pub idle: bool,
    pub size: VmSize,
    /// When its record was written (oldest members are taken first).
    pub since: std::time::SystemTime,
}

/// The pool's live keepers, oldest first. The entries of dead ones (a keeper killed,
/// or one whose VM failed) are removed on the way.
pub fn members(state_dir: &Path) -> Vec<Member> {
    let Ok(read) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut live = Vec::new();
    for file in read.flatten() {
        let name = file.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        let entry = Entry::new(state_dir, id);
        let record = std::fs::read(file.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<MemberRecord>(&b).ok());
        match record {
            Some(r) if r.owner.is_alive() => live.push(Member {
                idle: entry.socket().exists(),
                size: r.size,
                pid: r.owner.pid,
                since: file
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH),
                entry,
            }),
            _ => {
                tracing::debug!(id, "removing the pool entry of a keeper that is gone");
                entry.remove();
            }
        }
    }
    live.sort_by_key(|m| m.since);
    live
}

/// What the `start` of a new task sends a keeper: the flags containerd would have
/// started the shim server with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClaimRequest {
    pub namespace: String,
    /// The task's id (`-id`).
    pub id: String,
    /// containerd's address (`-address`).
    pub address: String,
    /// Where containerd's events go (`TTRPC_ADDRESS`).
    pub ttrpc_address: String,
    /// The shim socket to serve (`-socket`).
    pub socket: String,
    pub bundle: PathBuf,
    pub debug: bool,
}

impl ClaimRequest {
    /// The shim server's command-line flags, as `start` would pass them.
    pub fn shim_args(&self) -> Vec<String> {
        let mut args = vec![
            "-namespace".to_string(),
            self.namespace.clone(),
            "-id".to_string(),
            self.id.clone(),
            "-address".to_string(),
            self.address.clone(),
            "-socket".to_string(),
            self.socket.clone(),
        ];
        if self.debug {
            args.push("-debug".to_string());
        }
        args
    }
}

/// A keeper's answer: the sandbox it serves the task with, or why it cannot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClaimReply {
    #[serde(default)]
    pub sandbox: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// How long one keeper has to start serving once claimed.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// Takes an idle pool VM of `size` for the task of `request`: the first keeper, oldest
/// first, that answers serves the task from then on. None when no such VM is idle or
/// none could be taken (the caller boots a shim of its own, as without a pool).
pub fn claim(state_dir: &Path, size: VmSize, request: &ClaimRequest) -> Option<String> {
    for member in members(state_dir)
        .into_iter()
        .filter(|m| m.idle && m.size == size)
    {
        match claim_one(&member.entry.socket(), request) {
            Ok(sandbox) => {
                tracing::debug!(keeper = member.pid, %sandbox, task = %request.id, "took a pool VM");
                return Some(sandbox);
            }
            // Another start took it first, or it died: try the next.
            Err(why) => {
                tracing::debug!(keeper = member.pid, id = %member.entry.id, why, "pool VM not taken")
            }
        }
    }
    None
}

fn claim_one(socket: &Path, request: &ClaimRequest) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(CLAIM_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CLAIM_TIMEOUT)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    let mut line = serde_json::to_vec(request).map_err(|e| format!("request: {e}"))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("send the claim: {e}"))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .take(64 * 1024)
        .read_line(&mut reply)
        .map_err(|e| format!("read the reply: {e}"))?;
    if reply.is_empty() {
        return Err("the keeper closed the connection (taken by another task, or gone)".into());
    }
    let reply: ClaimReply =
        serde_json::from_str(&reply).map_err(|e| format!("reply {reply:?}: {e}"))?;
    match (reply.sandbox, reply.error) {
        (Some(sandbox), None) => Ok(sandbox),
        (_, Some(error)) => Err(error),
        (None, None) => Err("an empty reply".into()),
    }
}

/// Starts keepers until the pool has, for each of `classes`, its count of live ones
/// (idle or booting); returns the ids started. Runs under a lock, so two `start`s never
/// both fill the same gap. `exe` is the shim binary; the keepers are detached (a
/// session of their own) and outlive the caller. `config`: the config file they read
/// (else they inherit `$HULL_CONFIG` or take the default, as the caller did).
pub fn fill(
    state_dir: &Path,
    classes: &[crate::config::PoolClass],
    exe: &Path,
    config: Option<&Path>,
) -> Result<Vec<String>, PoolError> {
    let pool = dir(state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&pool)
        .map_err(io_error("create", &pool))?;
    let lock_path = pool.join("fill.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("open", &lock_path))?;
    // Blocks while another fill counts and spawns; released when `_held` drops.
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_error("lock", &lock_path)(std::io::Error::from(e)))?;
    let live = members(state_dir);
    let mut started = Vec::new();
    for class in classes {
        let size = VmSize {
            vcpus: class.vcpus,
            memory_mib: class.memory_mib,
        };
        let have = live.iter().filter(|m| m.size == size).count();
        for _ in have..class.size as usize {
            started.push(spawn_keeper(state_dir, size, exe, config)?);
        }
    }
    if !started.is_empty() {
        tracing::debug!(?started, live = live.len(), "pool VMs starting");
    }
    Ok(started)
}

fn spawn_keeper(
    state_dir: &Path,
    size: VmSize,
    exe: &Path,
    config: Option<&Path>,
) -> Result<String, PoolError> {
    let id = crate::sandbox::state_dir::new_id();
    let entry = Entry::new(state_dir, &id);
    let log_path = entry.log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_error("create", &log_path))?;
    let err = log.try_clone().map_err(io_error("open", &log_path))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(KEEPER_COMMAND)
        .arg(&id)
        .arg(size.vcpus.to_string())
        .arg(size.memory_mib.to_string())
        .current_dir(dir(state_dir))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    if let Some(config) = config {
        cmd.env(crate::config::CONFIG_ENV, config);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it runs
    // in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| PoolError::Spawn {
        exe: exe.to_path_buf(),
        source,
    })?;
    let owner = crate::sandbox::leftovers::ProcStat::read(child.id()).map(|s| Owner {
        pid: child.id(),
        start_time: s.start_time,
    });
    let Some(owner) = owner else {
        entry.remove();
        return Err(PoolError::Spawn {
            exe: exe.to_path_buf(),
            source: std::io::Error::other("the keeper exited at once (see its log)"),
        });
    };
    let record = entry.record();
    let text = serde_json::to_vec(&MemberRecord { owner, size }).map_err(|e| PoolError::Io {
        what: "encode",
        path: record.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::atomic_write::write_atomically(&record, &text, 0o600)
        .map_err(io_error("write", &record))?;
    Ok(id)
}

/// Waits up to `timeout` until no keeper is booting; returns how many are idle.
pub fn wait_ready(state_dir: &Path, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let live = members(state_dir);
        if live.iter().all(|m| m.idle) || Instant::now() >= deadline {
            return live.iter().filter(|m| m.idle).count();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops every keeper (SIGTERM: an idle one destroys its VM and removes its entry) and
/// waits up to `timeout` for them; one still there is killed (its VM's processes die
/// with it, and `hull gc` removes what it left). Returns how many were stopped.
pub fn drain(state_dir: &Path, timeout: Duration) -> usize {
    let stopping = members(state_dir);
    for m in &stopping {
        signal(m.pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = members(state_dir);
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for m in &left {
                tracing::warn!(pid = m.pid, id = %m.entry.id, "pool VM keeper did not stop in time: killing it");
                signal(m.pid, nix::sys::signal::Signal::SIGKILL);
                m.entry.remove();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stopping.len()
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_flags_are_the_shims() {
        let r = ClaimRequest {
            namespace: "k8s.io".into(),
            id: "abc".into(),
            address: "/run/containerd/containerd.sock".into(),
            ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            socket: "unix:///run/containerd/s/1".into(),
            bundle: "/b".into(),
            debug: true,
        };
        let flags = containerd_shim::parse(&r.shim_args()).expect("flags");
        assert_eq!(flags.namespace, "k8s.io");
        assert_eq!(flags.id, "abc");
        assert_eq!(flags.socket, "unix:///run/containerd/s/1");
        assert_eq!(flags.address, "/run/containerd/containerd.sock");
        assert!(flags.debug);
        assert!(flags.action.is_empty(), "serving, not start or delete");
    }

    #[test]
    fn dead_members_are_removed_and_live_ones_listed() {
        let t = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir(t.path())).expect("pool dir");
        let me = Entry::new(t.path(), "live");
        let owner = Owner::current().expect("own stat");
        let size = VmSize {
            vcpus: 1,
            memory_mib: 256,
        };
        std::fs::write(
            me.record(),
            serde_json::to_vec(&MemberRecord { owner, size }).expect("json"),
        )
        .expect("record");
        std::fs::write(me.socket(), b"").expect("socket stand-in");
        let dead = Entry::new(t.path(), "dead");
        let gone = Owner {
            pid: owner.pid,
            start_time: owner.start_time + 1,
        };
        std::fs::write(
            dead.record(),
            serde_json::to_vec(&MemberRecord { owner: gone, size }).expect("json"),
        )
        .expect("record");
        std::fs::write(dead.log(), b"log").expect("log");
        std::fs::write(dir(t.path()).join("junk.json"), b"{").expect("junk");
        let live = members(t.path());
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].entry.id, "live");
        assert!(live[0].idle);
        assert_eq!(live[0].size, size);
        assert!(!dead.record().exists() && !dead.log().exists());
        assert!(!dir(t.path()).join("junk.json").exists());
    }

    #[test]
    fn a_claim_on_a_socket_nobody_serves_is_refused_by_name() {
        let t = tempfile::tempdir().expect("tmp");
        let sock = t.path().join("x.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let request = ClaimRequest {
            namespace: "n".into(),
            id: "i".into(),
            address: "a".into(),
            ttrpc_address: "t".into(),
            socket: "s".into(),
            bundle: "/b".into(),
            debug: false,
        };
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).expect("read");
            let got: ClaimRequest = serde_json::from_str(&line).expect("request");
            let mut conn = conn;
            conn.write_all(b"{\"error\":\"the VM died\"}\n")
                .expect("reply");
            got
        });
        let e = claim_one(&sock, &request).expect_err("refused");
        assert_eq!(e, "the VM died");
        assert_eq!(server.join().expect("server"), request);
    }
}
