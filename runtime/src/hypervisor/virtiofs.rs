//! virtiofsd (rust-vmm, vhost-user-fs backend): shares one host directory into a VM.
//!
//! Run as `virtiofsd --socket-path S --shared-dir D --cache never --sandbox namespace`:
//! the daemon moves into its own mount namespace with D as its root, so the guest can
//! reach nothing of the host outside D (mounts under D made before it starts are
//! included). No `--tag`: it crashes QEMU 7.x; the tag is set on QEMU's device. It exits
//! by itself when its VM goes; the backend stops it anyway.
//!
//! Jailed, it stays root (it must create and serve files of any owner, see
//! docs/threat-model.md) with its default capability set (chown, dac_override, fowner,
//! fsetid, setgid, setuid, mknod, setfcap), its own namespace sandbox and seccomp
//! filter (`--seccomp kill`), plus no_new_privs and the jail's rlimits; its socket is
//! handed to the sandbox uid once it exists.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::HypervisorError;
use crate::child::HelperProcess;
use crate::jail::Jail;

/// Starts virtiofsd in `sock_dir`, where it creates its socket `socket_name`.
pub fn spawn(
    jail: Option<&Jail>,
    sock_dir: &Path,
    bin: &Path,
    socket_name: &str,
    shared_dir: &Path,
    stderr_log: &Path,
) -> Result<HelperProcess, HypervisorError> {
    let mut cmd = match jail {
        Some(j) => j.privileged_command(bin),
        None => Command::new(bin),
    };
    // Run in the socket dir and name the socket relative to it: a deep state dir
    // would make the absolute path too long for a socket address (`uds_path`).
    cmd.current_dir(sock_dir)
        .arg("--socket-path")
        .arg(crate::uds_path::for_helper(sock_dir, socket_name))
        .arg("--shared-dir")
        .arg(shared_dir)
        .args([
            "--cache",
            "never",
            "--sandbox",
            "namespace",
            "--seccomp",
            "kill",
        ])
        .stdout(Stdio::null());
    Ok(HelperProcess::spawn("virtiofsd", cmd, stderr_log)?)
}
