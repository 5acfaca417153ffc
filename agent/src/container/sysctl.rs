//! Sysctls of a container spec (`linux.sysctl`) that belong to the pod's network.
//!
//! In the guest, the containers of a pod run in the VM's own network namespace, which
//! is the pod's (the host's netns path is dropped, see [`super::spec::adapt`]). A
//! network sysctl (`net.*`) such a container's spec carries (containerd 2.x's CRI puts
//! `net.ipv4.ip_unprivileged_port_start` and `net.ipv4.ping_group_range` in every
//! sandbox spec, Kubernetes' pod sysctls go there too) is the pod's to set, but
//! libcontainer refuses it for a container without a network namespace of its own
//! ("not allowed in host network namespace"). So the agent takes those keys out of the
//! spec ([`take_vm_net_sysctls`]) and writes them itself into the VM's network
//! namespace ([`apply`]) before libcontainer creates the container. Every other sysctl,
//! and all of them for a container with its own network namespace, stay in the spec for
//! libcontainer as before.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tracing::info;

/// Longest key accepted (the longest in a 6.x kernel are under 64 bytes).
const MAX_KEY: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("sysctl {key:?} is not a valid key: {why}")]
    BadKey { key: String, why: &'static str },
    #[error("sysctl {key} = {value:?} in the VM's network namespace: {source}")]
    Write {
        key: String,
        value: String,
        source: std::io::Error,
    },
}

/// One sysctl: its key as the spec names it, its file under /proc/sys, its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub key: String,
    pub path: PathBuf,
    pub value: String,
}

/// The components of `key`: dotted (`net.ipv4.ip_forward`), or slashed when it has a
/// `/` (`net/ipv4/conf/eth0.100/forwarding`, for names with dots). Each component must
/// be non-empty, not `.` or `..`, of printable ASCII without spaces: no key can name
/// anything outside /proc/sys.
fn components(key: &str) -> Result<Vec<&str>, SysctlError> {
    let bad = |why| {
        Err(SysctlError::BadKey {
            key: key.chars().take(80).collect(),
            why,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY {
        return bad("longer than 256 bytes");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only printable ASCII without spaces is allowed");
    }
    let sep = if key.contains('/') { '/' } else { '.' };
    let parts: Vec<&str> = key.split(sep).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return bad("empty component (leading, trailing or doubled separator)");
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return bad("a component is . or ..");
    }
    Ok(parts)
}

/// The file of sysctl `key` under /proc/sys, or why the key is refused.
pub fn path(key: &str) -> Result<PathBuf, SysctlError> {
    Ok(components(key)?
        .into_iter()
        .fold(Path::new("/proc/sys").to_path_buf(), |p, c| p.join(c)))
}

/// Whether `key` is a network sysctl (`net.*`, per network namespace).
pub fn is_net(key: &str) -> bool {
    let sep = if key.contains('/') { '/' } else { '.' };
    key.split(sep).next() == Some("net")
}

/// Whether the container runs in the VM's network namespace: its (guest) spec asks for
/// no network namespace. After [`super::spec::adapt`] a network entry left in the spec
/// is one of its own (no path).
pub fn shares_vm_netns(spec: &Spec) -> bool {
    !spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|ns| ns.typ() == LinuxNamespaceType::Network))
}

/// Takes the network sysctls out of `spec`'s `linux.sysctl` when the container shares
/// the VM's network namespace, checking their keys; they come back sorted by key, for
/// [`apply`]. A spec whose container has its own network namespace is left alone (its
/// network sysctls are libcontainer's to set there), and so are non-network sysctls.
/// On a bad key nothing is taken.
pub fn take_vm_net_sysctls(spec: &mut Spec) -> Result<Vec<Sysctl>, SysctlError> {
    if !shares_vm_netns(spec) {
        return Ok(Vec::new());
    }
    let Some(sysctls) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.sysctl_mut().as_mut())
    else {
        return Ok(Vec::new());
    };
    let mut taken = sysctls
        .iter()
        .filter(|(k, _)| is_net(k))
        .map(|(k, v)| {
            Ok(Sysctl {
                key: k.clone(),
                path: path(k)?,
                value: v.clone(),
            })
        })
        .collect::<Result<Vec<_>, SysctlError>>()?;
    taken.sort_by(|a, b| a.key.cmp(&b.key));
    for s in &taken {
        sysctls.remove(&s.key);
    }
    Ok(taken)
}

/// Writes `sysctls` in this process's network namespace (the agent's: the VM's, the
/// pod's), in order; the first failure names its key and value.
pub fn apply(container: &str, sysctls: &[Sysctl]) -> Result<(), SysctlError> {
    for s in sysctls {
        std::fs::write(&s.path, &s.value).map_err(|source| SysctlError::Write {
            key: s.key.clone(),
            value: s.value.clone(),
            source,
        })?;
        info!(container, key = %s.key, value = %s.value, "network sysctl set in the VM's network namespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec(namespaces: &str, sysctl: &str) -> Spec {
        let json = format!(
            r#"{{"ociVersion":"1.0.2","process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"root":{{"path":"/r"}},
            "linux":{{"namespaces":{namespaces},"sysctl":{sysctl}}}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    fn left(s: &Spec) -> HashMap<String, String> {
        s.linux()
            .as_ref()
            .unwrap()
            .sysctl()
            .clone()
            .unwrap_or_default()
    }

    const CRI: &str = r#"{"net.ipv4.ping_group_range":"0 2147483647","net.ipv4.ip_unprivileged_port_start":"0",
        "kernel.shm_rmid_forced":"1","fs.mqueue.msg_max":"20"}"#;

    #[test]
    fn net_sysctls_of_a_container_in_the_vm_netns_are_taken_out_sorted() {
        let mut s = spec(r#"[{"type":"pid"},{"type":"ipc"},{"type":"mount"}]"#, CRI);
        let taken = take_vm_net_sysctls(&mut s).unwrap();
        assert_eq!(
            taken,
            vec![
                Sysctl {
                    key: "net.ipv4.ip_unprivileged_port_start".into(),
                    path: "/proc/sys/net/ipv4/ip_unprivileged_port_start".into(),
                    value: "0".into(),
                },
                Sysctl {
                    key: "net.ipv4.ping_group_range".into(),
                    path: "/proc/sys/net/ipv4/ping_group_range".into(),
                    value: "0 2147483647".into(),
                },
            ]
        );
        // Non-network sysctls stay for libcontainer, values untouched.
        let rest = left(&s);
        assert_eq!(rest.len(), 2, "{rest:?}");
        assert_eq!(rest["kernel.shm_rmid_forced"], "1");
        assert_eq!(rest["fs.mqueue.msg_max"], "20");
    }

    #[test]
    fn a_container_with_its_own_netns_keeps_its_net_sysctls() {
        let mut s = spec(r#"[{"type":"pid"},{"type":"network"}]"#, CRI);
        assert_eq!(take_vm_net_sysctls(&mut s).unwrap(), vec![]);
        assert_eq!(left(&s).len(), 4);
    }

    #[test]
    fn no_namespaces_or_no_sysctls() {
        let mut s = spec("null", r#"{"net.core.somaxconn":"1024"}"#);
        assert!(shares_vm_netns(&s));
        assert_eq!(take_vm_net_sysctls(&mut s).unwrap().len(), 1);
        assert!(left(&s).is_empty());
        let mut s = spec("[]", "null");
        assert_eq!(take_vm_net_sysctls(&mut s).unwrap(), vec![]);
    }

    #[test]
    fn slashed_keys_with_dotted_names() {
        let mut s = spec(
            "[]",
            r#"{"net/ipv4/conf/eth0.100/forwarding":"1","kernel/msgmax":"9"}"#,
        );
        let taken = take_vm_net_sysctls(&mut s).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(
            taken[0].path,
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        assert_eq!(left(&s).keys().collect::<Vec<_>>(), vec!["kernel/msgmax"]);
    }

    #[test]
    fn bad_keys_are_named_and_nothing_is_taken() {
        for bad in [
            "net..ipv4",
            "net.ipv4.",
            "net/../../etc/passwd",
            "net/ipv4/../../../etc",
            "net/ipv4//x",
            "net/./ipv4",
            "net.ipv4.a b",
            "net.ipv4.\u{0}x",
            "net.ipv4.é",
        ] {
            let mut m = serde_json::Map::new();
            m.insert(bad.to_string(), "1".into());
            m.insert("net.core.somaxconn".to_string(), "1".into());
            let mut s = spec("[]", &serde_json::Value::Object(m).to_string());
            let e = take_vm_net_sysctls(&mut s).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{:?}", bad.chars().take(80).collect::<String>())),
                "{bad:?}: {e}"
            );
            assert_eq!(left(&s).len(), 2, "{bad:?}: nothing taken on error");
        }
        assert!(path(&"net.x".repeat(60)).is_err());
        assert!(path("").is_err());
        assert!(path("/proc/sys/net").is_err());
    }

    #[test]
    fn keys_and_paths() {
        assert_eq!(
            path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(is_net("net.ipv4.ip_forward") && is_net("net/core/somaxconn"));
        assert!(!is_net("network.x") && !is_net("kernel.net") && !is_net("netx/y"));
        assert!(!is_net("kernel.shmmax"));
    }

    #[test]
    fn a_failed_write_names_the_key() {
        let s = Sysctl {
            key: "net.ipv4.nope".into(),
            path: "/nonexistent/hull/sysctl".into(),
            value: "1".into(),
        };
        let e = apply("c1", &[s]).unwrap_err().to_string();
        assert!(e.contains("net.ipv4.nope") && e.contains("\"1\""), "{e}");
    }
}
