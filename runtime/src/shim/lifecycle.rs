//! The shim's own lifecycle, as containerd drives it:
//! - `start`: pick the shim for the task (a pod's containers share their sandbox's
//!   shim, others get their own), start it in the background if it is not running, and
//!   print its ttrpc address;
//! - (no action): serve the Task service until Shutdown;
//! - `delete`: run by containerd when a shim is gone (crashed, killed): remove what it
//!   left, from the record in the bundle.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{ExitSignal, Shim};
use containerd_shim::{Config as ShimConfig, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::MessageField;

use super::events::Events;
use super::process::now;
use super::record;
use super::service::Service;
use super::task::TaskService;
use super::warm::WarmSlot;
use super::{ANNOTATION_CONTAINER_TYPE, ANNOTATION_SANDBOX_ID};
use crate::pool::{self, ClaimRequest};

pub struct HullShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    /// A pool VM for the pod, when a keeper became this shim.
    warm: std::sync::Mutex<Option<WarmSlot>>,
}

impl HullShim {
    /// Hands the shim a booted pool VM for its pod's first container.
    pub fn give_warm(&self, slot: WarmSlot) {
        *self.warm.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot);
    }
}

/// The shim crate's settings: hull reaps its own children (tokio owns their waits, a
/// global `waitpid(-1)` would steal their statuses), is no subreaper, and logs with
/// `tracing` (set up in the binary).
pub fn shim_config() -> ShimConfig {
    ShimConfig {
        no_setup_logger: true,
        default_log_level: "info".into(),
        no_reaper: true,
        no_sub_reaper: true,
    }
}

/// Which shim serves the task in `bundle`: a pod's containers go to the shim of their
/// sandbox; anything else (plain `ctr run`, a pod's sandbox container) to its own.
pub fn grouping(id: &str, bundle: &Path) -> String {
    let Ok(spec) = super::spec::read(bundle) else {
        return id.to_string();
    };
    match (
        super::spec::annotation(&spec, ANNOTATION_CONTAINER_TYPE),
        super::spec::annotation(&spec, ANNOTATION_SANDBOX_ID),
    ) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.to_string(),
        _ => id.to_string(),
    }
}

fn shim_error(what: &str, e: impl std::fmt::Display) -> containerd_shim::Error {
    containerd_shim::Error::Other(format!("{what}: {e}"))
}

#[async_trait]
impl Shim for HullShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        HullShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            warm: std::sync::Mutex::new(None),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let bundle = std::env::current_dir().map_err(|e| shim_error("bundle dir", e))?;
        let group = grouping(&opts.id, &bundle);
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
        let socket = address
            .strip_prefix("unix://")
            .unwrap_or(&address)
            .to_string();
        // A pod's later containers: the sandbox's shim already listens there.
        if group != opts.id && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            write_address(&bundle, &address)?;
            return Ok(address);
        }
        let exe = std::env::current_exe().map_err(|e| shim_error("own executable", e))?;
        if group == opts.id {
            let claim = ClaimRequest {
                namespace: opts.namespace.clone(),
                id: opts.id.clone(),
                address: opts.address.clone(),
                ttrpc_address: opts.ttrpc_address.clone(),
                socket: address.clone(),
                bundle: bundle.clone(),
                debug: opts.debug,
            };
            if take_from_pool(&claim, &exe) {
                write_address(&bundle, &address)?;
                return Ok(address);
            }
        }
        let mut cmd = tokio::process::Command::new(exe);
        cmd.current_dir(&bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .args([
                "-namespace",
                &opts.namespace,
                "-id",
                &opts.id,
                "-address",
                &opts.address,
                "-socket",
                &address,
            ]);
        if opts.debug {
            cmd.arg("-debug");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| shim_error("starting the shim server", e))?;
        // The server closes its stdout once it listens (the shim crate's handshake).
        if let Some(mut out) = child.stdout.take() {
            let _ = tokio::io::copy(&mut out, &mut tokio::io::sink()).await;
        }
        write_address(&bundle, &address)?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| shim_error("bundle dir", e))?;
        cleanup(&bundle);
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let events = Events::new(publisher, self.namespace.clone());
        let warm = self
            .warm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        TaskService::new(Service::new(events, self.exit.clone(), warm))
    }
}

/// A new task or pod takes a warm pool VM when `[pool] size` asks for a pool and one
/// is idle (its keeper then serves the task); either way the pool is topped up in
/// the background. False: boot a shim of its own, as without a pool. Logs at debug
/// only: containerd takes all `start` prints, stderr too, as the shim's address.
fn take_from_pool(claim: &ClaimRequest, exe: &Path) -> bool {
    let config = match crate::config::Config::load(None) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "no pool: the config does not load");
            return false;
        }
    };
    let classes = config.pool_classes();
    if classes.is_empty() {
        return false;
    }
    let state = &config.runtime.state_dir;
    // The size the task's VM will have (the pod's first container decides; its
    // cgroup's limits may still shrink it, and the take is then undone at Create).
    let size = super::spec::ContainerSpec::load(&claim.bundle)
        .and_then(|spec| super::vm_size::sandbox_spec(&config, &spec))
        .map(|vm| pool::VmSize {
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
        });
    let taken = match size {
        Ok(size) => pool::claim(state, size, claim).is_some(),
        Err(e) => {
            tracing::debug!(error = %e, "no pool VM: the task's spec does not say its size");
            false
        }
    };
    if !taken {
        tracing::debug!(task = %claim.id, "no idle pool VM of its size: the task boots its own");
    }
    if let Err(e) = pool::fill(state, &classes, exe, None) {
        tracing::debug!(error = %e, "the pool is not refilled");
    }
    taken
}

fn write_address(bundle: &Path, address: &str) -> containerd_shim::Result<()> {
    std::fs::write(bundle.join("address"), address)
        .map_err(|e| shim_error("writing the address file", e))
}

/// What `delete` does: the VM's leftovers (processes, mounts, state dir), the
/// container's rootfs mount in the bundle, if any, and the socket of a shim that is gone.
pub fn cleanup(bundle: &Path) {
    if let Some(leftovers) = record::read(bundle) {
        tracing::info!(state_dir = %leftovers.state_dir.display(), "cleaning up after a shim that is gone");
        record::clean(&leftovers);
        record::remove(bundle);
    }
    remove_stale_socket(bundle);
}

/// Removes the shim socket the bundle's `address` file names if nobody listens on it
/// any more: a killed shim leaves it behind. A pod's shim that still runs answers, and
/// keeps its socket.
fn remove_stale_socket(bundle: &Path) {
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        remove_socket_if_stale(address.trim());
    }
}

/// Removes the shim socket at `address` (`unix:///...` or a path) if it is a socket
/// nobody listens on. The serving shim calls it as it exits: the shim crate removes the
/// socket through the bundle's `address` file, which containerd may already have
/// deleted with the bundle by then.
pub fn remove_socket_if_stale(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    let path = Path::new(address.strip_prefix("unix://").unwrap_or(address));
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !path.is_absolute() || !is_socket {
        return;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing the socket of a shim that is gone");
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), error = %e, "cannot remove a stale shim socket");
            }
        }
        _ => {}
    }
}
