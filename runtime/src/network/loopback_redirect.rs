//! The host half of port forwarding into a pod. containerd serves CRI's PortForward
//! (`kubectl port-forward`) by dialling `localhost:PORT` inside the pod's network
//! namespace, where nothing of the guest listens. A NAT rule in that netns sends every
//! TCP connection to loopback to one listener the shim holds there (`iptables -t nat -A
//! OUTPUT -d 127.0.0.1 -p tcp -j REDIRECT`, and the same for `::1` with ip6tables), and
//! the port asked for is read back from conntrack (`SO_ORIGINAL_DST`). The listener's
//! own port is left out of the rule; a connection to it is not redirected, lands on
//! the listener all the same and is forwarded to that same port.
//!
//! The rules live in the pod's netns only and go with it; [`LoopbackRedirect::remove`]
//! deletes them earlier, when the pod's VM goes.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{netns, NetworkError};

/// Bound on one iptables run (it waits up to 5 s for the xtables lock itself).
const TOOL_DEADLINE: Duration = Duration::from_secs(15);

/// The rule and listeners of one pod's netns.
#[derive(Debug)]
pub struct LoopbackRedirect {
    path: PathBuf,
    netns: File,
    port: u16,
    /// The tools whose rule is in place (`iptables`, `ip6tables`).
    installed: Vec<&'static str>,
}

/// Listeners in the pod's netns, for the forwarder.
#[derive(Debug)]
pub struct RedirectListeners {
    pub listeners: Vec<TcpListener>,
}

impl LoopbackRedirect {
    /// Opens the listener on 127.0.0.1 (and `::1` when the netns has IPv6) in the netns
    /// `netns` at `path`, and adds the redirect rules. On error nothing is left.
    pub fn install(
        netns: &File,
        path: &Path,
    ) -> Result<(LoopbackRedirect, RedirectListeners), NetworkError> {
        let owned = path.to_path_buf();
        let (listeners, port, installed) =
            netns::run_in(
                netns,
                path,
                move || async move { open_and_redirect(&owned) },
            )??;
        let redirect = LoopbackRedirect {
            path: path.to_path_buf(),
            netns: netns.try_clone().map_err(|source| NetworkError::Io {
                netns: path.to_path_buf(),
                source,
            })?,
            port,
            installed,
        };
        Ok((redirect, RedirectListeners { listeners }))
    }

    /// The listeners' port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Deletes the rules. Idempotent.
    pub fn remove(&mut self) -> Result<(), NetworkError> {
        let tools = std::mem::take(&mut self.installed);
        if tools.is_empty() {
            return Ok(());
        }
        let (path, port) = (self.path.clone(), self.port);
        netns::run_in(&self.netns, &self.path, move || async move {
            for tool in tools {
                run_tool(&path, tool, &rule("-D", port, tool == "ip6tables"))?;
            }
            Ok(())
        })?
    }
}

impl Drop for LoopbackRedirect {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(netns = %self.path.display(), error = %e, "removing the port-forward redirect");
        }
    }
}

/// Inside the netns: the listeners, then the rules (the IPv6 one only when `::1` is
/// there). A rule that fails takes back the ones made before it.
fn open_and_redirect(
    path: &Path,
) -> Result<(Vec<TcpListener>, u16, Vec<&'static str>), NetworkError> {
    let io = |source| NetworkError::Io {
        netns: path.to_path_buf(),
        source,
    };
    let v4 = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).map_err(io)?;
    let port = v4.local_addr().map_err(io)?.port();
    let mut listeners = vec![v4];
    if let Ok(v6) = TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
        listeners.push(v6);
    }
    let mut installed = Vec::new();
    for (tool, v6) in [("iptables", false), ("ip6tables", true)] {
        if v6 && listeners.len() < 2 {
            continue;
        }
        if let Err(e) = run_tool(path, tool, &rule("-A", port, v6)) {
            for done in installed {
                let _ = run_tool(path, done, &rule("-D", port, done == "ip6tables"));
            }
            return Err(e);
        }
        installed.push(tool);
    }
    for l in &listeners {
        l.set_nonblocking(true).map_err(io)?;
    }
    Ok((listeners, port, installed))
}

/// The arguments of the redirect rule (`op`: `-A` adds, `-D` deletes).
pub fn rule(op: &str, port: u16, v6: bool) -> Vec<String> {
    let loopback = if v6 { "::1/128" } else { "127.0.0.1/32" };
    let port = port.to_string();
    [
        "-w",
        "5",
        "-t",
        "nat",
        op,
        "OUTPUT",
        "-d",
        loopback,
        "-p",
        "tcp",
        "-m",
        "tcp",
        "!",
        "--dport",
        &port,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `tool args` (in the calling thread's netns) with a deadline.
fn run_tool(path: &Path, tool: &str, args: &[String]) -> Result<(), NetworkError> {
    let failed = |what: String| NetworkError::Redirect {
        netns: path.to_path_buf(),
        what,
    };
    let mut cmd = Command::new(tool);
    cmd.args(args);
    let out = crate::host::output_within(&mut cmd, TOOL_DEADLINE).map_err(|e| {
        failed(format!(
            "cannot run {tool}: {e} (port forwarding needs iptables: apt-get install iptables)"
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(failed(format!(
        "{tool} {}: {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// The destination port a redirected connection asked for (`SO_ORIGINAL_DST`, or
/// `IP6T_SO_ORIGINAL_DST` on IPv6); for a connection that was not redirected, its own.
pub fn original_port(stream: &impl AsRawFd, v6: bool) -> std::io::Result<u16> {
    // Both options are 80 in linux/netfilter_ipv4.h and netfilter_ipv6/ip6_tables.h.
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    // A sockaddr_in6 holds a sockaddr_in; the port is at the same offset in both.
    // SAFETY: sockaddr_in6 is plain old data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `addr` is a writable buffer of `len` bytes that outlives the call, and the
    // kernel writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in6).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u16::from_be(addr.sin6_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_leaves_the_listeners_port_alone() {
        let r = rule("-A", 40000, false).join(" ");
        assert_eq!(
            r,
            "-w 5 -t nat -A OUTPUT -d 127.0.0.1/32 -p tcp -m tcp ! --dport 40000 -j REDIRECT --to-ports 40000"
        );
        assert!(rule("-D", 1, true)
            .join(" ")
            .contains("-D OUTPUT -d ::1/128"));
    }
}
