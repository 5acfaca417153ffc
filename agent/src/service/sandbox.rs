//! The sandbox as a whole: CreateSandbox (policy, storages, hostname, DNS, hosts, sysctls) and
//! DestroySandbox (stop everything, power off).

use std::time::Duration;

use hull_proto::{
    CreateSandboxRequest, DestroySandboxRequest, DnsConfig, Empty, SetIdentityRequest,
    SetIdentityResponse,
};
use tracing::{info, info_span, Instrument};

use super::{Service, ServiceError};

/// How long the reply to DestroySandbox gets to leave the guest before the power-off
/// starts. The reply is written by the connection's task on this same runtime as soon
/// as the handler returns; this leaves room for it to cross vsock.
pub const REPLY_GRACE: Duration = Duration::from_millis(250);

/// Stops everything first (as guest init: SIGTERM to every process, SIGKILL after
/// `timeout_secs`, sync), then replies; the power-off runs in a task, not before
/// [`REPLY_GRACE`] has passed: reboot (as guest init), or the process exits (outside a
/// guest). So the reply tells the host that nothing runs and everything is written: it
/// may stop the VM at once rather than wait for the reboot. Asking again while it runs
/// is harmless.
pub async fn do_destroy_sandbox(
    svc: &Service,
    req: &DestroySandboxRequest,
) -> Result<Empty, ServiceError> {
    let grace = Duration::from_secs(u64::from(req.timeout_secs));
    svc.containers.close();
    let power = svc.power.clone();
    info!(?grace, mode = ?power.mode(), "destroying the sandbox");
    power
        .settle(grace)
        .instrument(info_span!("destroy_sandbox_settle"))
        .await;
    let not_before = tokio::time::Instant::now() + REPLY_GRACE;
    tokio::spawn(
        async move {
            power.power_off(not_before).await;
        }
        .instrument(info_span!("destroy_sandbox")),
    );
    Ok(Empty::new())
}

/// Where the pod's hostname, resolv.conf and hosts files are written for containers to
/// bind-mount (the host's spec names them as mount sources).
pub const SANDBOX_FILES: &str = "/run/hull/sandbox";

/// resolv.conf text for `dns` (None: no DNS configured).
pub fn resolv_conf(dns: &DnsConfig) -> Option<String> {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut s = String::new();
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(s)
}

/// /etc/hosts text: localhost lines, the hostname, then the host's lines.
pub fn hosts_file(hostname: &str, extra: &[String]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for line in extra {
        s.push_str(line.trim_end_matches('\n'));
        s.push('\n');
    }
    s
}

fn write_file(name: &str, text: &str) -> Result<(), ServiceError> {
    let dir = std::path::Path::new(SANDBOX_FILES);
    std::fs::create_dir_all(dir)
        .map_err(|e| ServiceError::internal(format!("create {SANDBOX_FILES}"), e))?;
    std::fs::write(dir.join(name), text)
        .map_err(|e| ServiceError::internal(format!("write {SANDBOX_FILES}/{name}"), e))
}

fn check_hostname(h: &str) -> Result<(), ServiceError> {
    if h.len() > 64
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(ServiceError::InvalidArgument(format!(
            "hostname {h:?} is not a valid host name"
        )));
    }
    Ok(())
}

fn check_sysctl(key: &str) -> Result<std::path::PathBuf, ServiceError> {
    Ok(crate::container::sysctl::path(key)?)
}

/// Mounts the storages (the virtio-fs share first, as the host sends it), sets the
/// guest hostname and writes hostname/resolv.conf/hosts under [`SANDBOX_FILES`], applies
/// guest-wide sysctls.
/// A second call fails with AlreadyExists (a failed one may be retried).
pub fn do_create_sandbox(svc: &Service, req: &CreateSandboxRequest) -> Result<Empty, ServiceError> {
    let _span = info_span!("create_sandbox", id = %req.sandbox_id).entered();
    if !svc.containers.mark_created() {
        return Err(ServiceError::AlreadyExists(
            "the sandbox was already created".into(),
        ));
    }
    // `rpc` admitted the request (and its policy) against the policies in force.
    let sent = match req.policy.as_str() {
        "" => None,
        text => match crate::policy::Policy::parse(text) {
            Ok(p) => Some(p),
            Err(e) => {
                svc.containers.unmark_created();
                return Err(e.into());
            }
        },
    };
    if let Some(p) = &sent {
        info!(policy = %p.name, "agent policy sent by the host");
    }
    if let Err(e) = svc.policy.seal(sent) {
        svc.containers.unmark_created();
        return Err(e.into());
    }
    svc.containers.set_debug_exec(req.debug_exec);
    if req.debug_exec {
        info!("debug processes are allowed in this sandbox (hull debug exec)");
    }
    let result = create_sandbox(req);
    if result.is_err() {
        svc.containers.unmark_created();
        svc.policy.unseal();
    }
    result
}

/// Bounds of `SetIdentityRequest.entropy`.
const IDENTITY_ENTROPY: std::ops::RangeInclusive<usize> = 32..=4096;

/// SetIdentity: a restored clone gets fresh entropy (credited, then the CRNG
/// reseeded), the host's wall clock and its hostname, before CreateSandbox.
pub fn do_set_identity(
    svc: &Service,
    req: &SetIdentityRequest,
) -> Result<SetIdentityResponse, ServiceError> {
    let _span = info_span!("set_identity", id = %req.sandbox_id).entered();
    if svc.containers.is_created() {
        return Err(ServiceError::FailedPrecondition(
            "SetIdentity comes before CreateSandbox".into(),
        ));
    }
    if !IDENTITY_ENTROPY.contains(&req.entropy.len()) {
        return Err(ServiceError::InvalidArgument(format!(
            "entropy must be {}..={} bytes, got {}",
            IDENTITY_ENTROPY.start(),
            IDENTITY_ENTROPY.end(),
            req.entropy.len()
        )));
    }
    if !req.hostname.is_empty() {
        check_hostname(&req.hostname)?;
    }
    let wall = std::time::Duration::from_nanos(
        u64::try_from(req.wall_clock_unix_ns)
            .map_err(|_| ServiceError::InvalidArgument("wall_clock_unix_ns before 1970".into()))?,
    );
    crate::entropy::add_and_reseed(&req.entropy)
        .map_err(|e| ServiceError::internal("adding entropy", e))?;
    let now = nix::sys::time::TimeSpec::from_duration(wall);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now)
        .map_err(|e| ServiceError::internal("clock_settime", e))?;
    if !req.hostname.is_empty() {
        nix::unistd::sethostname(&req.hostname)
            .map_err(|e| ServiceError::internal("sethostname", e))?;
    }
    // Linux makes boot_id on its first read: read after the reseed, it is this
    // clone's own (nothing reads it before a template's snapshot).
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    info!(
        boot_id = %boot_id,
        hostname = %req.hostname,
        "identity set after a restore (entropy added, CRNG reseeded, clock set)"
    );
    Ok(SetIdentityResponse {
        boot_id,
        ..Default::default()
    })
}

fn create_sandbox(req: &CreateSandboxRequest) -> Result<Empty, ServiceError> {
    if !req.hostname.is_empty() {
        check_hostname(&req.hostname)?;
    }
    let plans = req
        .storages
        .iter()
        .map(crate::storage::plan)
        .collect::<Result<Vec<_>, _>>()?;
    let sysctls = req
        .sysctls
        .iter()
        .map(|(k, v)| check_sysctl(k).map(|p| (p, v)))
        .collect::<Result<Vec<_>, _>>()?;
    for plan in &plans {
        crate::storage::mount(plan)?;
        info!(target = %plan.target.display(), source = %plan.source, "storage mounted");
    }
    if !req.hostname.is_empty() {
        nix::unistd::sethostname(&req.hostname)
            .map_err(|e| ServiceError::internal("sethostname", e))?;
        write_file("hostname", &format!("{}\n", req.hostname))?;
    }
    write_file("hosts", &hosts_file(&req.hostname, &req.hosts))?;
    if let Some(dns) = req.dns.as_ref().and_then(resolv_conf) {
        write_file("resolv.conf", &dns)?;
    }
    for (path, value) in sysctls {
        std::fs::write(&path, value)
            .map_err(|e| ServiceError::internal(format!("sysctl {}", path.display()), e))?;
    }
    Ok(Empty::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_and_hosts_files() {
        let mut dns = DnsConfig::new();
        assert_eq!(resolv_conf(&dns), None);
        dns.servers = vec!["10.0.0.2".into(), "1.1.1.1".into()];
        dns.searches = vec!["svc.local".into(), "local".into()];
        dns.options = vec!["ndots:5".into()];
        assert_eq!(
            resolv_conf(&dns).unwrap(),
            "nameserver 10.0.0.2\nnameserver 1.1.1.1\nsearch svc.local local\noptions ndots:5\n"
        );
        let h = hosts_file("pod1", &["10.0.0.5 pod1.svc".into()]);
        assert!(h.contains("127.0.0.1\tlocalhost\n") && h.contains("127.0.1.1\tpod1\n"));
        assert!(h.ends_with("10.0.0.5 pod1.svc\n"));
    }

    #[test]
    fn bad_hostname_and_sysctl() {
        assert!(check_hostname("pod-1.example").is_ok());
        assert!(check_hostname("a b").is_err());
        assert!(check_sysctl("net.ipv4.ip_forward").is_ok());
        assert!(check_sysctl("../../etc").is_err());
        assert!(check_sysctl("/etc/passwd").is_err());
    }
}
