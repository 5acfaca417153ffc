//! containerd's OCI runtime spec (the bundle's `config.json`) made into the guest's:
//! the rootfs and every host-path bind mount are rewritten to guest paths in the
//! sandbox share, and what only means something on the host (AppArmor/SELinux labels,
//! hooks, the pod's netns path) is dropped. The spec stays JSON throughout, so no field
//! that hull does not know is lost on the way to the agent.

use std::path::Path;

use serde_json::{json, Value};

use super::ShimError;
use crate::sandbox::share::{Propagation, Share, VolumeMount};

/// Size of the guest tmpfs that replaces CRI's host `/dev/shm` bind mount.
const SHM_SIZE: &str = "size=65536k";

/// A runtime spec as containerd wrote it.
#[derive(Debug, Clone)]
pub struct HostSpec {
    json: Value,
}

fn invalid(what: String) -> ShimError {
    ShimError::InvalidArgument(format!("invalid OCI spec: {what}"))
}

impl HostSpec {
    /// Reads and checks `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<HostSpec, ShimError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|e| {
            ShimError::InvalidArgument(format!("cannot read {}: {e}", path.display()))
        })?;
        HostSpec::parse(&text)
    }

    pub fn parse(text: &[u8]) -> Result<HostSpec, ShimError> {
        let json: Value =
            serde_json::from_slice(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let spec = HostSpec { json };
        spec.validate()?;
        Ok(spec)
    }

    /// What the guest would refuse, named before a VM is booted for nothing.
    fn validate(&self) -> Result<(), ShimError> {
        let process = self
            .json
            .get("process")
            .ok_or_else(|| invalid("no process".into()))?;
        validate_process(process, "process")?;
        if self
            .json
            .pointer("/root/path")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(invalid("no root.path".into()));
        }
        Ok(())
    }

    /// `linux.namespaces` (empty when absent).
    pub fn namespaces(&self) -> &[Value] {
        match self.json.pointer("/linux/namespaces") {
            Some(Value::Array(nss)) => nss,
            _ => &[],
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.json.pointer("/annotations")?.get(key)?.as_str()
    }

    /// The bundle-relative or absolute rootfs path containerd prepared.
    pub fn root_path(&self) -> &str {
        self.json
            .pointer("/root/path")
            .and_then(Value::as_str)
            .unwrap_or("rootfs")
    }

    pub fn terminal(&self) -> bool {
        self.json
            .pointer("/process/terminal")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    pub fn hostname(&self) -> Option<&str> {
        self.json
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
    }

    /// Memory limit (bytes), if the spec sets one.
    pub fn memory_limit(&self) -> Option<u64> {
        self.json
            .pointer("/linux/resources/memory/limit")
            .and_then(Value::as_i64)
            .filter(|l| *l > 0)
            .map(|l| l as u64)
    }

    /// `linux.cgroupsPath`, if set and not empty.
    pub fn cgroups_path(&self) -> Option<&str> {
        self.json
            .pointer("/linux/cgroupsPath")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
    }

    /// CPUs from the CFS quota and period, if set.
    pub fn cpus(&self) -> Option<f64> {
        let quota = self.json.pointer("/linux/resources/cpu/quota")?.as_i64()?;
        let period = self.json.pointer("/linux/resources/cpu/period")?.as_u64()?;
        (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
    }

    /// Refuses what asks for a namespace of the node that a VM cannot give: the node's
    /// IPC namespace (CRI's `NamespaceMode NODE` for ipc, `hostIPC`: the spec then
    /// has no ipc entry). The container would otherwise get the guest's, which shares
    /// nothing with the node's processes. (The node's network is refused in
    /// `network::open`; the node's PID and UTS namespaces are the VM's, see
    /// `pod_namespaces`.)
    pub fn check_node_namespaces(&self) -> Result<(), ShimError> {
        if !self.namespaces().iter().any(|ns| ns["type"] == "ipc") {
            return Err(ShimError::InvalidArgument(
                "the spec has no ipc namespace (the node's IPC namespace: hostIPC); a hull pod runs in a VM, which cannot share the node's System V IPC and POSIX message queues: give the pod its own IPC namespace (drop hostIPC)".into(),
            ));
        }
        Ok(())
    }

    /// The namespaces a container of a pod shares with the pod's sandbox container:
    /// the ipc, uts and pid entries containerd's CRI gave a path (the sandbox
    /// container's, seen from the host). CRI leaves the path out where the pod does not
    /// share (pid without shareProcessNamespace) and the entry out for the node's
    /// namespaces (hostIPC, hostPID; uts with hostNetwork), which in hull are the VM's.
    pub fn pod_namespaces(&self) -> Vec<&'static str> {
        let Some(Value::Array(nss)) = self.json.pointer("/linux/namespaces") else {
            return Vec::new();
        };
        let mut shared = Vec::new();
        for ns in nss {
            let has_path = ns
                .get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| !p.is_empty());
            let typ = match ns.get("type").and_then(Value::as_str) {
                Some("ipc") => "ipc",
                Some("uts") => "uts",
                Some("pid") => "pid",
                _ => continue,
            };
            if has_path && !shared.contains(&typ) {
                shared.push(typ);
            }
        }
        shared
    }

    /// The guest's spec as JSON: rootfs at `rootfs_guest`; host bind mounts added to
    /// `share` (container `cid`) and pointed at their guest paths.
    pub fn to_guest(
        &self,
        cid: &str,
        rootfs_guest: &str,
        share: &mut Share,
    ) -> Result<Vec<u8>, ShimError> {
        let mut spec = self.json.clone();
        spec["root"]["path"] = json!(rootfs_guest);
        if let Some(p) = spec.get_mut("process").and_then(Value::as_object_mut) {
            p.remove("apparmorProfile");
            p.remove("selinuxLabel");
        }
        if let Some(o) = spec.as_object_mut() {
            o.remove("hooks");
        }
        if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
            linux.remove("mountLabel");
            if let Some(Value::Array(nss)) = linux.get_mut("namespaces") {
                // The pod's network is the VM's: a netns path of the host means nothing.
                nss.retain(|ns| !(ns["type"] == "network" && ns.get("path").is_some()));
                // Other paths name the host's view of the pod's sandbox container
                // (/proc/<pid>/ns/..): meaningless in the guest and never sent there.
                // A pod's container shares the ipc/uts/pid ones with the sandbox
                // container through the agent instead (`pod_namespaces`); the rest are
                // the container's own.
                for ns in nss.iter_mut() {
                    if let Some(o) = ns.as_object_mut() {
                        o.remove("path");
                    }
                }
            }
        }
        if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
            // runc's recursive spellings (CRI's "rslave", "rshared"); the guest's
            // runtime (youki) takes "slave", "shared", "private", "unbindable" and
            // always applies them recursively.
            if let Some(p) = linux.get("rootfsPropagation").and_then(Value::as_str) {
                if let Some(plain) = p
                    .strip_prefix('r')
                    .filter(|p| ["slave", "shared", "private", "unbindable"].contains(p))
                {
                    linux.insert("rootfsPropagation".into(), json!(plain));
                }
            }
        }
        if let Some(Value::Array(mounts)) = spec.get_mut("mounts") {
            // Every mount checked before the first is made.
            for m in mounts.iter().filter(|m| is_bind(m)) {
                volume_mount(
                    m,
                    m["source"].as_str().unwrap_or_default(),
                    m["destination"].as_str().unwrap_or_default(),
                )?;
            }
            for (n, m) in mounts.iter_mut().enumerate() {
                rewrite_mount(m, n, cid, share)?;
            }
        }
        serde_json::to_vec(&spec).map_err(|e| ShimError::internal(format!("spec to JSON: {e}")))
    }
}

fn is_bind(m: &Value) -> bool {
    m["type"] == "bind"
        || m["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// How a bind mount of the spec is made on the host: its `ro`/`rro`, `bind`/`rbind`
/// and propagation options. Propagation that would carry mounts from the container
/// to the host (`shared`, `rshared`: Kubernetes' Bidirectional) cannot cross the VM
/// boundary, since a mount in the container is a mount in the guest's kernel: refused,
/// naming the mount. Host-to-container (`slave`, `rslave`) crosses it on the host
/// side: the volume receives the host's later mounts, and virtiofsd serves what is
/// below them; in the guest, where those are plain directories of the share, the
/// option keeps its meaning for mounts made in the guest.
fn volume_mount(m: &Value, source: &str, dest: &str) -> Result<VolumeMount, ShimError> {
    let opts: Vec<&str> = m["options"]
        .as_array()
        .map(|o| o.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut how = VolumeMount {
        readonly: opts.iter().any(|o| *o == "ro" || *o == "rro"),
        recursive: opts.contains(&"rbind"),
        propagation: Propagation::Private,
    };
    for o in &opts {
        match *o {
            "shared" | "rshared" => {
                return Err(invalid(format!(
                    "bind mount {source} (for {dest}) asks for {o} mount propagation (Bidirectional): mounts made in the container are made in the VM's kernel and can never reach the host; hull supports rslave (HostToContainer) and rprivate (None)"
                )))
            }
            "slave" | "rslave" => how.propagation = Propagation::Slave,
            "private" | "rprivate" | "unbindable" | "runbindable" => how.propagation = Propagation::Private,
            _ => {}
        }
    }
    Ok(how)
}

fn rewrite_mount(m: &mut Value, n: usize, cid: &str, share: &mut Share) -> Result<(), ShimError> {
    if !is_bind(m) {
        return Ok(());
    }
    let dest = m["destination"].as_str().unwrap_or_default().to_string();
    let source = m["source"].as_str().unwrap_or_default().to_string();
    if dest == "/dev/shm" {
        // CRI binds the pod's shm from the host; in the VM the pod's shm is a tmpfs.
        *m = json!({
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", SHM_SIZE],
        });
        return Ok(());
    }
    let how = volume_mount(m, &source, &dest)?;
    let src = Path::new(&source);
    if !src.is_absolute() {
        return Err(invalid(format!(
            "bind mount source {source:?} (for {dest}) is not absolute"
        )));
    }
    let meta = std::fs::metadata(src)
        .map_err(|e| invalid(format!("bind mount source {source} (for {dest}): {e}")))?;
    let guest = if meta.is_dir() {
        share.add_volume_with(cid, n, src, how)
    } else {
        share.add_file(cid, n, src, how.readonly)
    }
    .map_err(|e| ShimError::Internal(format!("sharing {source} for {dest}: {e}")))?;
    m["source"] = json!(guest);
    m["type"] = json!("bind");
    Ok(())
}

/// The checks the agent makes on a process, made here first.
pub fn validate_process(process: &Value, what: &str) -> Result<(), ShimError> {
    let args = process["args"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if args
        .first()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        return Err(invalid(format!(
            "{what}.args is empty: there is no command to run"
        )));
    }
    let cwd = process["cwd"].as_str().unwrap_or_default();
    if !cwd.starts_with('/') {
        return Err(invalid(format!(
            "{what}.cwd {cwd:?} is not an absolute path"
        )));
    }
    if let Some(env) = process["env"].as_array() {
        if let Some(bad) = env
            .iter()
            .find(|e| !e.as_str().is_some_and(|s| s.contains('=')))
        {
            return Err(invalid(format!("{what}.env entry {bad} is not KEY=VALUE")));
        }
    }
    Ok(())
}

/// An exec's process JSON (from containerd) made into the guest's.
pub fn guest_process(json: &[u8]) -> Result<Vec<u8>, ShimError> {
    let mut p: Value =
        serde_json::from_slice(json).map_err(|e| invalid(format!("exec process: {e}")))?;
    validate_process(&p, "exec process")?;
    if let Some(o) = p.as_object_mut() {
        o.remove("apparmorProfile");
        o.remove("selinuxLabel");
    }
    serde_json::to_vec(&p).map_err(|e| ShimError::internal(format!("process to JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::share::mounts_under;

    fn spec(process: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "ociVersion": "1.0.2",
            "process": process,
            "root": {"path": "rootfs"},
            "hostname": "h",
            "linux": {
                "resources": {"memory": {"limit": 268435456}, "cpu": {"quota": 150000, "period": 100000}},
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/x"}],
                "mountLabel": "x"
            },
            "hooks": {"prestart": []},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/x/shm", "options": ["rbind"]}
            ]
        }))
        .expect("json")
    }

    #[test]
    fn checks_name_the_field() {
        let e = HostSpec::parse(&spec(json!({"args": ["sh"], "cwd": "rel"}))).expect_err("cwd");
        assert!(e.to_string().contains("process.cwd \"rel\""), "{e}");
        let e = HostSpec::parse(&spec(json!({"args": [], "cwd": "/"}))).expect_err("args");
        assert!(e.to_string().contains("args is empty"), "{e}");
        let e = HostSpec::parse(b"{").expect_err("json");
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[test]
    fn guest_spec_rewrites_host_parts() {
        let s = HostSpec::parse(&spec(
            json!({"args": ["sh"], "cwd": "/", "apparmorProfile": "p", "terminal": true}),
        ))
        .expect("valid");
        assert_eq!(s.memory_limit(), Some(256 << 20));
        assert_eq!(s.cpus(), Some(1.5));
        assert!(s.terminal());
        assert_eq!(s.hostname(), Some("h"));
        let t = tempfile::tempdir().expect("tmp");
        let mut share = Share::create(t.path()).expect("share");
        let out: Value = serde_json::from_slice(
            &s.to_guest("c1", "/run/hull/share/containers/c1/rootfs", &mut share)
                .expect("guest"),
        )
        .expect("json");
        assert_eq!(out["root"]["path"], "/run/hull/share/containers/c1/rootfs");
        assert!(out["process"].get("apparmorProfile").is_none());
        assert!(out.get("hooks").is_none());
        assert!(out["linux"].get("mountLabel").is_none());
        assert_eq!(out["linux"]["namespaces"], json!([{"type": "pid"}]));
        assert_eq!(out["mounts"][1]["type"], "tmpfs");
        assert_eq!(out["mounts"][0]["type"], "proc");
    }

    /// containerd's CRI spec of a pod's container (ipc/uts/pid/net paths name the
    /// sandbox container's host pid).
    fn cri_member(namespaces: Value) -> HostSpec {
        HostSpec::parse(
            &serde_json::to_vec(&json!({
                "ociVersion": "1.0.2",
                "process": {"args": ["sh"], "cwd": "/"},
                "root": {"path": "rootfs"},
                "linux": {"namespaces": namespaces}
            }))
            .expect("json"),
        )
        .expect("spec")
    }

    #[test]
    fn the_node_ipc_namespace_is_refused() {
        let e = cri_member(json!([{"type": "pid"}, {"type": "network"}]))
            .check_node_namespaces()
            .expect_err("host ipc");
        assert!(
            matches!(e, ShimError::InvalidArgument(_)) && e.to_string().contains("hostIPC"),
            "{e}"
        );
        assert!(cri_member(json!([])).check_node_namespaces().is_err());
        cri_member(json!([{"type": "ipc"}]))
            .check_node_namespaces()
            .expect("own ipc");
        cri_member(json!([{"type": "ipc", "path": "/proc/1/ns/ipc"}]))
            .check_node_namespaces()
            .expect("pod's ipc");
    }

    fn with_mounts(mounts: Value, linux: Value) -> HostSpec {
        HostSpec::parse(
            &serde_json::to_vec(&json!({
                "process": {"args": ["sh"], "cwd": "/"},
                "root": {"path": "rootfs"},
                "linux": linux,
                "mounts": mounts
            }))
            .expect("json"),
        )
        .expect("spec")
    }

    #[test]
    fn mount_options_decide_how_a_volume_is_bound() {
        let m = |opts: Value| json!({"destination": "/v", "type": "bind", "source": "/src", "options": opts});
        let how =
            volume_mount(&m(json!(["rbind", "rprivate", "ro"])), "/src", "/v").expect("private");
        assert_eq!(how, VolumeMount::rbind(true));
        let how = volume_mount(&m(json!(["rbind", "rslave", "rw"])), "/src", "/v").expect("slave");
        assert_eq!(
            (how.propagation, how.recursive, how.readonly),
            (Propagation::Slave, true, false)
        );
        let how = volume_mount(&m(json!(["bind", "rro"])), "/src", "/v").expect("bind");
        assert!(!how.recursive && how.readonly);
        for shared in ["rshared", "shared"] {
            let e = volume_mount(&m(json!(["rbind", shared])), "/src", "/v").expect_err(shared);
            let msg = e.to_string();
            assert!(
                msg.contains("/src") && msg.contains("/v") && msg.contains("Bidirectional"),
                "{msg}"
            );
        }
    }

    #[test]
    fn bidirectional_volumes_are_refused_before_anything_is_mounted_and_rootfs_propagation_is_youkis(
    ) {
        let t = tempfile::tempdir().expect("tmp");
        let mut share = Share::create(t.path()).expect("share");
        let src = t.path().display().to_string();
        let s = with_mounts(
            json!([
                {"destination": "/a", "type": "bind", "source": src, "options": ["rbind", "rprivate"]},
                {"destination": "/b", "type": "bind", "source": src, "options": ["rbind", "rshared"]}
            ]),
            json!({"rootfsPropagation": "rshared"}),
        );
        let e = s.to_guest("c1", "/r", &mut share).expect_err("rshared");
        assert!(e.to_string().contains("(for /b)"), "{e}");
        assert!(mounts_under(t.path()).is_empty());
        // rootfsPropagation in the guest's spelling; no mount here.
        let s = with_mounts(json!([]), json!({"rootfsPropagation": "rslave"}));
        let out: Value =
            serde_json::from_slice(&s.to_guest("c1", "/r", &mut share).expect("guest"))
                .expect("json");
        assert_eq!(out["linux"]["rootfsPropagation"], "slave");
    }

    #[test]
    fn pod_namespaces_are_the_shared_ones_and_no_host_path_reaches_the_guest() {
        let t = tempfile::tempdir().expect("tmp");
        let mut share = Share::create(t.path()).expect("share");
        // shareProcessNamespace: pid has a path too.
        let s = cri_member(json!([
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"},
            {"type": "mount"},
            {"type": "network", "path": "/proc/4242/ns/net"}
        ]));
        assert_eq!(s.pod_namespaces(), ["pid", "ipc", "uts"]);
        let out: Value =
            serde_json::from_slice(&s.to_guest("c1", "/r", &mut share).expect("guest"))
                .expect("json");
        assert_eq!(
            out["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}])
        );
        // A pod without a shared PID namespace, with hostNetwork (no uts entry): the
        // container's own pid namespace, nothing of the node's to share.
        let s = cri_member(
            json!([{"type": "pid"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}, {"type": "mount"}]),
        );
        assert_eq!(s.pod_namespaces(), ["ipc"]);
        // Paths of other types (or empty ones) are never joined, and never sent.
        let s = cri_member(json!([
            {"type": "mount", "path": "/proc/1/ns/mnt"},
            {"type": "user", "path": "/proc/1/ns/user"},
            {"type": "ipc", "path": ""}
        ]));
        assert!(s.pod_namespaces().is_empty());
        let out = s.to_guest("c2", "/r", &mut share).expect("guest");
        assert!(
            !String::from_utf8_lossy(&out).contains("/proc/1/ns"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // No namespaces at all.
        assert!(cri_member(json!([])).pod_namespaces().is_empty());
    }
}
