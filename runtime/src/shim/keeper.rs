//! `containerd-shim-hull-v2 pool-keep ID`: one warm pool VM (see `crate::pool`), in
//! the process that becomes its pod's shim.
//!
//! 1. boot a VM of its size class (as a pod of that size gets it), with no pod data;
//! 2. wait, idle, on `<state_dir>/pool/ID.sock` for a claim, SIGTERM (drain) or the
//!    VM's death;
//! 3. claimed: leave the pool, move into the task's bundle, serve the Task API on
//!    the shim socket with the VM ready ([`super::warm`]), answer the claimant;
//! 4. serve until containerd shuts the shim down, as any shim.
//!
//! The VM's processes were spawned by this process's only thread, so their
//! parent-death signal stays armed for the shim's whole life. A keeper that fails
//! before it is claimed removes everything it made and exits non-zero; the next
//! `start` starts another.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::Shim;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::Instrument;

use super::lifecycle::{self, HullShim};
use super::warm::{WarmSandbox, WarmSlot};
use super::RUNTIME_ID;
use crate::cgroup::HostCgroup;
use crate::config::Config;
use crate::hypervisor::net::NetDevice;
use crate::network::PoolNic;
use crate::pool::{ClaimReply, ClaimRequest, Entry, VmSize};
use crate::sandbox::{Sandbox, SandboxError};

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Backend(#[from] crate::hypervisor::SelectError),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Share(#[from] crate::sandbox::share::ShareError),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs keeper `id`; returns the process's exit code. `claimed` is called with the
/// task's bundle once the VM is taken (the shim logs to containerd from then on).
pub async fn run(id: String, size: VmSize, claimed: impl FnOnce(&Path)) -> i32 {
    let config_path = crate::config::source_path(None);
    let config = match Config::load(None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "pool VM not started");
            return 1;
        }
    };
    let entry = Entry::new(&config.runtime.state_dir, &id);
    // Before the boot: a drain may come while it runs.
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            entry.remove();
            return 1;
        }
    };
    let cgroup = join_pool_cgroup(&id);
    let booted = tokio::select! {
        booted = boot(&config, config_path, cgroup, &id, size).instrument(tracing::info_span!("pool_boot", id = %id)) => booted,
        _ = term.recv() => {
            // Dropping the boot kills the VM's processes and removes its state dir.
            tracing::info!("pool drained while the VM booted");
            entry.remove();
            return 0;
        }
    };
    let warm = match booted {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "pool VM failed to boot");
            entry.remove();
            return 1;
        }
    };
    let listener = match listen(&entry) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "pool VM not offered");
            teardown(warm).await;
            entry.remove();
            return 1;
        }
    };
    tracing::info!(id, "pool VM ready, waiting to be taken");
    wait_for_claim(warm, listener, term, entry, claimed).await
}

/// Idle pool VMs are charged to a cgroup of their own, `hull-pool/<id>` in every
/// hierarchy hull uses, not to whoever started them (containerd); what it holds when a
/// pod takes the VM is what the pod's limit is lowered by (see `HostCgroup::adopt`).
fn join_pool_cgroup(id: &str) -> Option<HostCgroup> {
    let joined = crate::cgroup::Target::detect(
        Path::new(crate::cgroup::DEFAULT_ROOT),
        Path::new(crate::pool::POOL_CGROUP).join(id),
    )
    .and_then(|t| t.create(None))
    .and_then(|mut cg| {
        cg.join_self()?;
        Ok(cg)
    });
    match joined {
        Ok(cg) => Some(cg),
        Err(e) => {
            tracing::warn!(error = %e, "the pool VM stays in its starter's cgroup");
            None
        }
    }
}

/// Boots the VM a pod of `size` gets from `config`, its share ready for pods.
async fn boot(
    config: &Config,
    config_path: PathBuf,
    cgroup: Option<HostCgroup>,
    id: &str,
    size: VmSize,
) -> Result<WarmSandbox, KeeperError> {
    let backend = crate::hypervisor::select(config)?;
    let mut spec = crate::run::prepare::sandbox_spec(config, None, None, false);
    spec.id = Some(id.to_string());
    spec.vcpus = size.vcpus;
    spec.memory_mib = size.memory_mib;
    // One NIC, for the pod network most pods have (one veth from CNI).
    let nic = match PoolNic::create() {
        Ok(nic) => {
            spec.nics.push(NetDevice {
                tap_fd: nic.tap_fd(),
                mac: nic.mac().to_string(),
            });
            Some(nic)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the pool VM boots without a NIC: pods with a network will boot their own");
            None
        }
    };
    let mut sandbox = Sandbox::create(config, &spec, backend)?;
    if let Some(cg) = &cgroup {
        // A keeper killed from here on leaves `hull gc` its cgroup to remove too.
        sandbox.note_cgroups(cg.created())?;
    }
    if let Some(share) = sandbox.share_mut() {
        // A pod's containers are mounted into the share while virtiofsd runs.
        share.make_shared()?;
    }
    sandbox.start(config, &spec).await?;
    sandbox.prepare_guest_caches().await;
    Ok(WarmSandbox {
        sandbox,
        spec,
        config_path,
        cgroup,
        nic,
    })
}

fn listen(entry: &Entry) -> Result<UnixListener, KeeperError> {
    let path = entry.socket();
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).map_err(|source| KeeperError::Listen { path, source })
}

async fn teardown(mut warm: WarmSandbox) {
    warm.sandbox.teardown().await;
}

/// Idle until claimed (then the shim's life), drained or dead.
async fn wait_for_claim(
    mut warm: WarmSandbox,
    listener: UnixListener,
    mut term: Signal,
    entry: Entry,
    claimed: impl FnOnce(&Path),
) -> i32 {
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((conn, _)) = conn else { continue };
                let request = match read_claim(conn).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "a bad claim on the pool socket");
                        continue;
                    }
                };
                // Out of the pool first: nobody else can take it or count it.
                entry.leave();
                drop(listener);
                return serve(warm, request, entry, claimed).await;
            }
            _ = term.recv() => {
                tracing::info!("pool drained: destroying the idle VM");
                entry.leave();
                if let Err(e) = warm.sandbox.destroy().await {
                    tracing::warn!(error = %e, "destroying the pool VM");
                }
                entry.remove();
                return 0;
            }
            status = warm.sandbox.wait_exit() => {
                tracing::error!(status, "the idle pool VM stopped; leaving the pool");
                entry.leave();
                teardown(warm).await;
                entry.remove();
                return 1;
            }
        }
    }
}

/// A claim: one JSON line, then the connection stays open for the reply.
async fn read_claim(
    mut conn: tokio::net::UnixStream,
) -> Result<(ClaimRequest, tokio::net::UnixStream), String> {
    let mut line = String::new();
    let (read, _) = conn.split();
    let mut reader = tokio::io::BufReader::new(read.take(64 * 1024));
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reader.read_line(&mut line),
    )
    .await
    .map_err(|_| "no claim within 5 s".to_string())?
    .map_err(|e| e.to_string())?;
    let request: ClaimRequest =
        serde_json::from_str(&line).map_err(|e| format!("claim {line:?}: {e}"))?;
    if !request.bundle.is_absolute() || request.socket.is_empty() || request.id.is_empty() {
        return Err(format!(
            "claim {line:?}: needs an absolute bundle, an id and a socket"
        ));
    }
    Ok((request, conn))
}

/// Serves the claimed task as its shim, with `warm` as the pod's VM.
async fn serve(
    mut warm: WarmSandbox,
    (request, mut conn): (ClaimRequest, tokio::net::UnixStream),
    entry: Entry,
    claimed: impl FnOnce(&Path),
) -> i32 {
    let sandbox_id = warm.sandbox.id().to_string();
    if let Err(e) = std::env::set_current_dir(&request.bundle) {
        let why = format!("cannot enter the bundle {}: {e}", request.bundle.display());
        reply(&mut conn, None, Some(why.clone())).await;
        tracing::error!(why, "pool VM not taken");
        teardown(warm).await;
        entry.remove();
        return 1;
    }
    claimed(&request.bundle);
    entry.remove();
    // The shim is the pod's from now on (its cgroup is made at Create); the VM stays
    // in the pool cgroup until the pod takes it (see `shim::pod`).
    if let Some(cg) = warm.cgroup.as_mut() {
        cg.leave_self();
    }
    tracing::info!(task = %request.id, sandbox = %sandbox_id, "pool VM taken: serving the task");
    let slot: WarmSlot = Arc::new(tokio::sync::Mutex::new(Some(warm)));
    let started = start_server(&request, slot.clone()).await;
    let (mut server, shim) = match started {
        Ok(s) => s,
        Err(why) => {
            reply(&mut conn, None, Some(why.clone())).await;
            tracing::error!(why, "cannot serve the task");
            if let Some(warm) = slot.lock().await.take() {
                teardown(warm).await;
            }
            return 1;
        }
    };
    reply(&mut conn, Some(sandbox_id), None).await;
    drop(conn);
    let mut shim = shim;
    shim.wait().await;
    tracing::info!("shutting down");
    let _ = server.shutdown().await;
    // A VM no container took (the task never came) goes with the shim.
    if let Some(warm) = slot.lock().await.take() {
        teardown(warm).await;
    }
    lifecycle::remove_socket_if_stale(&request.socket);
    0
}

async fn reply(conn: &mut tokio::net::UnixStream, sandbox: Option<String>, error: Option<String>) {
    let mut line = serde_json::to_vec(&ClaimReply { sandbox, error }).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = conn.write_all(&line).await {
        tracing::warn!(error = %e, "cannot answer the claimant");
    }
}

/// The Task API on the task's shim socket, as the shim crate's own server would run
/// it for a shim started by `start`.
async fn start_server(
    request: &ClaimRequest,
    warm: WarmSlot,
) -> Result<
    (
        containerd_shim_protos::ttrpc::asynchronous::Server,
        HullShim,
    ),
    String,
> {
    let flags = containerd_shim::parse(&request.shim_args()).map_err(|e| e.to_string())?;
    let mut shim_config = lifecycle::shim_config();
    let shim = HullShim::new(RUNTIME_ID, &flags, &mut shim_config).await;
    shim.give_warm(warm);
    let publisher = RemotePublisher::new(&request.ttrpc_address)
        .await
        .map_err(|e| format!("containerd's event address {}: {e}", request.ttrpc_address))?;
    let task = Box::new(shim.create_task_service(publisher).await)
        as Box<dyn containerd_shim_protos::shim_async::Task + Send + Sync>;
    let service = containerd_shim_protos::shim_async::create_task(Arc::from(task));
    let path = request
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&request.socket);
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on the shim socket {path}: {e}"))?;
    let listener =
        containerd_shim_protos::ttrpc::asynchronous::transport::Listener::try_from(listener)
            .map_err(|e| format!("the shim socket {path}: {e}"))?;
    let mut server = containerd_shim_protos::ttrpc::asynchronous::Server::new()
        .add_listener(listener)
        .register_service(service);
    server
        .start()
        .await
        .map_err(|e| format!("cannot serve on {path}: {e}"))?;
    Ok((server, shim))
}
