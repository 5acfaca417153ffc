//! containerd's OCI runtime spec (the bundle's `config.json`), read once per container:
//! what the host needs from it (annotations, namespaces, resources, the rootfs path)
//! and the guest's spec made from it, in oci-spec's types. What only means something
//! on the host is dropped from the guest's (AppArmor/SELinux labels, hooks, namespace
//! paths); CRI's `/dev/shm` bind becomes a tmpfs; every other bind mount is a
//! [`Volume`], checked here and placed in the share by `container_files`, which also
//! points the rootfs and those mounts at their guest paths.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, LinuxResources, Mount, Process, Spec};

use super::hooks::ContainerHooks;
use super::ShimError;
use crate::sandbox::share::{Propagation, VolumeMount};

/// Size of the guest tmpfs that replaces CRI's host `/dev/shm` bind mount.
const SHM_SIZE: &str = "size=65536k";

/// A host file or directory bound into the container: the `mounts` entry `index` of
/// the guest's spec, whose source becomes the volume's guest path.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub index: usize,
    pub source: PathBuf,
    pub destination: PathBuf,
    pub how: VolumeMount,
    pub is_dir: bool,
}

/// A container's spec: containerd's as written, the guest's made from it, and the
/// volumes the guest's needs in the share.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    host: Spec,
    /// The guest's spec; its rootfs path and volume sources are still the host's
    /// until `container_files::place` sets them.
    pub guest: Spec,
    pub volumes: Vec<Volume>,
    /// The spec's OCI hooks, for the shim to run on the host.
    pub hooks: ContainerHooks,
}

fn invalid(what: String) -> ShimError {
    ShimError::InvalidArgument(format!("invalid OCI spec: {what}"))
}

/// Reads `<bundle>/config.json` as an OCI spec, unchecked.
pub fn read(bundle: &Path) -> Result<Spec, ShimError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path)
        .map_err(|e| ShimError::InvalidArgument(format!("cannot read {}: {e}", path.display())))?;
    parse(&text)
}

fn parse(text: &[u8]) -> Result<Spec, ShimError> {
    serde_json::from_slice(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            invalid(format!("not JSON: {e}"))
        }
        _ => invalid(e.to_string()),
    })
}

/// An annotation of `spec`.
pub fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations().as_ref()?.get(key).map(String::as_str)
}

impl ContainerSpec {
    /// Reads and checks `<bundle>/config.json` and makes the guest's spec: everything
    /// the guest would refuse, every volume hull cannot bind and every namespace of the
    /// node a VM cannot give is named here, before a VM is booted or anything mounted.
    pub fn load(bundle: &Path) -> Result<ContainerSpec, ShimError> {
        let spec = ContainerSpec::from_spec(read(bundle)?)?;
        spec.check_node_namespaces()?;
        Ok(spec)
    }

    #[cfg(test)]
    pub fn parse(text: &[u8]) -> Result<ContainerSpec, ShimError> {
        ContainerSpec::from_spec(parse(text)?)
    }

    fn from_spec(host: Spec) -> Result<ContainerSpec, ShimError> {
        let process = host
            .process()
            .as_ref()
            .ok_or_else(|| invalid("no process".into()))?;
        validate_process(process, "process")?;
        if host.root().is_none() {
            return Err(invalid("no root.path".into()));
        }
        let (guest, volumes) = guest_spec(&host)?;
        let hooks = ContainerHooks::from_spec(host.hooks().as_ref(), host.annotations().as_ref())?;
        Ok(ContainerSpec {
            host,
            guest,
            volumes,
            hooks,
        })
    }

    /// `linux.namespaces` (empty when absent).
    pub fn namespaces(&self) -> &[LinuxNamespace] {
        self.host
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_deref())
            .unwrap_or_default()
    }

    /// The `network` entry of `linux.namespaces`: `None` when there is none (the host's
    /// network), `Some(None)` for a new one, `Some(Some(path))` for an existing one.
    pub fn network_namespace(&self) -> Option<Option<&Path>> {
        self.namespaces()
            .iter()
            .find(|ns| ns.typ() == LinuxNamespaceType::Network)
            .map(|ns| ns.path().as_deref().filter(|p| !p.as_os_str().is_empty()))
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        annotation(&self.host, key)
    }

    /// The bundle-relative or absolute rootfs path containerd prepared.
    pub fn root_path(&self) -> &Path {
        self.host
            .root()
            .as_ref()
            .map(|r| r.path().as_path())
            .unwrap_or(Path::new("rootfs"))
    }

    pub fn terminal(&self) -> bool {
        self.host
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    pub fn hostname(&self) -> Option<&str> {
        self.host.hostname().as_deref().filter(|h| !h.is_empty())
    }

    /// Memory limit (bytes), if the spec sets one.
    pub fn memory_limit(&self) -> Option<u64> {
        let limit = self
            .host
            .linux()
            .as_ref()?
            .resources()
            .as_ref()?
            .memory()
            .as_ref()?
            .limit()?;
        u64::try_from(limit).ok().filter(|l| *l > 0)
    }

    /// `linux.cgroupsPath`, if set and not empty.
    pub fn cgroups_path(&self) -> Option<&str> {
        self.host
            .linux()
            .as_ref()?
            .cgroups_path()
            .as_deref()?
            .to_str()
            .filter(|p| !p.is_empty())
    }

    /// CPUs from the CFS quota and period, if set.
    pub fn cpus(&self) -> Option<f64> {
        let cpu = self
            .host
            .linux()
            .as_ref()?
            .resources()
            .as_ref()?
            .cpu()
            .as_ref()?;
        let (quota, period) = (cpu.quota()?, cpu.period()?);
        (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
    }

    /// Refuses what asks for a namespace of the node that a VM cannot give: the node's
    /// IPC namespace (CRI's `NamespaceMode NODE` for ipc, `hostIPC`: the spec then
    /// has no ipc entry). The container would otherwise get the guest's, which shares
    /// nothing with the node's processes. (The node's network is refused in
    /// `pod_network::open`; the node's PID and UTS namespaces are the VM's, see
    /// `pod_namespaces`.)
    fn check_node_namespaces(&self) -> Result<(), ShimError> {
        if !self
            .namespaces()
            .iter()
            .any(|ns| ns.typ() == LinuxNamespaceType::Ipc)
        {
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
        let mut shared = Vec::new();
        for ns in self.namespaces() {
            let has_path = ns
                .path()
                .as_deref()
                .is_some_and(|p| !p.as_os_str().is_empty());
            let typ = match ns.typ() {
                LinuxNamespaceType::Ipc => "ipc",
                LinuxNamespaceType::Uts => "uts",
                LinuxNamespaceType::Pid => "pid",
                _ => continue,
            };
            if has_path && !shared.contains(&typ) {
                shared.push(typ);
            }
        }
        shared
    }
}

/// The guest's spec made from containerd's, and the volumes it binds.
fn guest_spec(host: &Spec) -> Result<(Spec, Vec<Volume>), ShimError> {
    let mut spec = host.clone();
    spec.set_hooks(None);
    if let Some(p) = spec.process_mut() {
        p.set_apparmor_profile(None);
        p.set_selinux_label(None);
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_mount_label(None);
        if let Some(nss) = linux.namespaces_mut() {
            // The pod's network is the VM's: a netns path of the host means nothing.
            nss.retain(|ns| !(ns.typ() == LinuxNamespaceType::Network && ns.path().is_some()));
            // Other paths name the host's view of the pod's sandbox container
            // (/proc/<pid>/ns/..): meaningless in the guest and never sent there.
            // A pod's container shares the ipc/uts/pid ones with the sandbox
            // container through the agent instead (`pod_namespaces`); the rest are
            // the container's own.
            for ns in nss.iter_mut() {
                ns.set_path(None);
            }
        }
        // runc's recursive spellings (CRI's "rslave", "rshared"); the guest's runtime
        // (youki) takes "slave", "shared", "private", "unbindable" and always applies
        // them recursively.
        let plain = linux
            .rootfs_propagation()
            .as_deref()
            .and_then(|p| p.strip_prefix('r'))
            .filter(|p| ["slave", "shared", "private", "unbindable"].contains(p))
            .map(str::to_string);
        if let Some(plain) = plain {
            linux.set_rootfs_propagation(Some(plain));
        }
    }
    let mut volumes = Vec::new();
    if let Some(mounts) = spec.mounts_mut() {
        for (index, m) in mounts.iter_mut().enumerate() {
            if !is_bind(m) {
                continue;
            }
            if m.destination() == Path::new("/dev/shm") {
                // CRI binds the pod's shm from the host; in the VM the pod's shm is a
                // tmpfs.
                *m = shm_tmpfs(m.destination());
                continue;
            }
            volumes.push(volume(index, m)?);
        }
    }
    Ok((spec, volumes))
}

fn shm_tmpfs(destination: &Path) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.to_path_buf());
    m.set_typ(Some("tmpfs".into()));
    m.set_source(Some("shm".into()));
    m.set_options(Some(
        ["nosuid", "noexec", "nodev", "mode=1777", SHM_SIZE]
            .map(String::from)
            .to_vec(),
    ));
    m
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// A bind mount of the spec as a volume: its source must be an absolute path that
/// exists.
fn volume(index: usize, m: &Mount) -> Result<Volume, ShimError> {
    let destination = m.destination().clone();
    let source = m.source().clone().unwrap_or_default();
    let how = volume_mount(m, &source, &destination)?;
    if !source.is_absolute() {
        return Err(invalid(format!(
            "bind mount source {source:?} (for {}) is not absolute",
            destination.display()
        )));
    }
    let meta = std::fs::metadata(&source).map_err(|e| {
        invalid(format!(
            "bind mount source {} (for {}): {e}",
            source.display(),
            destination.display()
        ))
    })?;
    Ok(Volume {
        index,
        source,
        destination,
        how,
        is_dir: meta.is_dir(),
    })
}

/// How a bind mount of the spec is made on the host: its `ro`/`rro`, `bind`/`rbind`
/// and propagation options. Propagation that would carry mounts from the container
/// to the host (`shared`, `rshared`: Kubernetes' Bidirectional) cannot cross the VM
/// boundary, since a mount in the container is a mount in the guest's kernel: refused,
/// naming the mount. Host-to-container (`slave`, `rslave`) crosses it on the host
/// side: the volume receives the host's later mounts, and virtiofsd serves what is
/// below them; in the guest, where those are plain directories of the share, the
/// option keeps its meaning for mounts made in the guest.
fn volume_mount(m: &Mount, source: &Path, dest: &Path) -> Result<VolumeMount, ShimError> {
    let opts: Vec<&str> = m
        .options()
        .as_ref()
        .map(|o| o.iter().map(String::as_str).collect())
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
                    "bind mount {} (for {}) asks for {o} mount propagation (Bidirectional): mounts made in the container are made in the VM's kernel and can never reach the host; hull supports rslave (HostToContainer) and rprivate (None)",
                    source.display(),
                    dest.display()
                )))
            }
            "slave" | "rslave" => how.propagation = Propagation::Slave,
            "private" | "rprivate" | "unbindable" | "runbindable" => how.propagation = Propagation::Private,
            _ => {}
        }
    }
    Ok(how)
}

/// The checks the agent makes on a process, made here first.
pub fn validate_process(process: &Process, what: &str) -> Result<(), ShimError> {
    let args = process.args().as_deref().unwrap_or_default();
    if args.first().is_none_or(|a| a.is_empty()) {
        return Err(invalid(format!(
            "{what}.args is empty: there is no command to run"
        )));
    }
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(invalid(format!(
            "{what}.cwd {:?} is not an absolute path",
            cwd.display().to_string()
        )));
    }
    if let Some(bad) = process
        .env()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| !e.contains('='))
    {
        return Err(invalid(format!(
            "{what}.env entry {bad:?} is not KEY=VALUE"
        )));
    }
    Ok(())
}

/// New resources for a container (containerd's OCI `LinuxResources` JSON).
pub fn resources(json: &[u8]) -> Result<LinuxResources, ShimError> {
    serde_json::from_slice(json)
        .map_err(|e| ShimError::InvalidArgument(format!("invalid OCI resources: {e}")))
}

/// An exec's process (containerd's JSON) made into the guest's.
pub fn guest_process(json: &[u8]) -> Result<Process, ShimError> {
    let mut p: Process =
        serde_json::from_slice(json).map_err(|e| invalid(format!("exec process: {e}")))?;
    validate_process(&p, "exec process")?;
    p.set_apparmor_profile(None);
    p.set_selinux_label(None);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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

    fn guest_json(s: &ContainerSpec) -> Value {
        serde_json::to_value(&s.guest).expect("json")
    }

    #[test]
    fn checks_name_the_field() {
        let user = json!({"uid": 0, "gid": 0});
        let e = ContainerSpec::parse(&spec(json!({"user": user, "args": ["sh"], "cwd": "rel"})))
            .expect_err("cwd");
        assert!(e.to_string().contains("process.cwd \"rel\""), "{e}");
        let e = ContainerSpec::parse(&spec(json!({"user": user, "args": [], "cwd": "/"})))
            .expect_err("args");
        assert!(e.to_string().contains("args is empty"), "{e}");
        let e = ContainerSpec::parse(&spec(
            json!({"user": user, "args": ["sh"], "cwd": "/", "env": ["A=1", "B"]}),
        ))
        .expect_err("env");
        assert!(e.to_string().contains("process.env entry \"B\""), "{e}");
        let e = ContainerSpec::parse(b"{").expect_err("json");
        assert!(e.to_string().contains("not JSON"), "{e}");
        let e = ContainerSpec::parse(&spec(json!({"args": ["sh"], "cwd": "/"}))).expect_err("user");
        assert!(e.to_string().contains("user"), "{e}");
    }

    #[test]
    fn guest_spec_rewrites_host_parts() {
        let s = ContainerSpec::parse(&spec(json!({"user": {"uid": 0, "gid": 0},
            "args": ["sh"], "cwd": "/", "apparmorProfile": "p", "terminal": true})))
        .expect("valid");
        assert_eq!(s.memory_limit(), Some(256 << 20));
        assert_eq!(s.cpus(), Some(1.5));
        assert!(s.terminal());
        assert_eq!(s.hostname(), Some("h"));
        assert_eq!(
            s.network_namespace(),
            Some(Some(Path::new("/var/run/netns/x")))
        );
        assert!(s.volumes.is_empty(), "{:?}", s.volumes);
        let out = guest_json(&s);
        assert!(out["process"].get("apparmorProfile").is_none());
        assert!(out.get("hooks").is_none());
        assert!(out["linux"].get("mountLabel").is_none());
        assert_eq!(out["linux"]["namespaces"], json!([{"type": "pid"}]));
        assert_eq!(out["mounts"][1]["type"], "tmpfs");
        assert_eq!(out["mounts"][0]["type"], "proc");
    }

    /// containerd's CRI spec of a pod's container (ipc/uts/pid/net paths name the
    /// sandbox container's host pid).
    fn cri_member(namespaces: Value) -> ContainerSpec {
        ContainerSpec::parse(
            &serde_json::to_vec(&json!({
                "ociVersion": "1.0.2",
                "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
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

    #[test]
    fn load_refuses_the_node_ipc_namespace() {
        let bundle = tempfile::tempdir().expect("tmp");
        let write = |namespaces: Value| {
            let spec = json!({
                "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
                "root": {"path": "rootfs"},
                "linux": {"namespaces": namespaces}
            });
            std::fs::write(bundle.path().join("config.json"), spec.to_string()).expect("write");
        };
        write(json!([{"type": "pid"}, {"type": "network"}]));
        let e = ContainerSpec::load(bundle.path()).expect_err("hostIPC");
        assert!(e.to_string().contains("hostIPC"), "{e}");
        write(json!([{"type": "pid"}, {"type": "ipc"}, {"type": "network"}]));
        ContainerSpec::load(bundle.path()).expect("own ipc");
        std::fs::remove_file(bundle.path().join("config.json")).expect("rm");
        let e = ContainerSpec::load(bundle.path()).expect_err("no config");
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn the_network_entry_is_read() {
        assert_eq!(
            cri_member(json!([{"type": "ipc"}])).network_namespace(),
            None
        );
        assert_eq!(
            cri_member(json!([{"type": "network"}])).network_namespace(),
            Some(None)
        );
        assert_eq!(
            cri_member(json!([{"type": "network", "path": ""}])).network_namespace(),
            Some(None)
        );
    }

    fn with_mounts(mounts: Value, linux: Value) -> Result<ContainerSpec, ShimError> {
        ContainerSpec::parse(
            &serde_json::to_vec(&json!({
                "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
                "root": {"path": "rootfs"},
                "linux": linux,
                "mounts": mounts
            }))
            .expect("json"),
        )
    }

    #[test]
    fn mount_options_decide_how_a_volume_is_bound() {
        let m = |opts: Value| -> Mount {
            serde_json::from_value(
                json!({"destination": "/v", "type": "bind", "source": "/src", "options": opts}),
            )
            .expect("mount")
        };
        let (src, dst) = (Path::new("/src"), Path::new("/v"));
        let how = volume_mount(&m(json!(["rbind", "rprivate", "ro"])), src, dst).expect("private");
        assert_eq!(how, VolumeMount::rbind(true));
        let how = volume_mount(&m(json!(["rbind", "rslave", "rw"])), src, dst).expect("slave");
        assert_eq!(
            (how.propagation, how.recursive, how.readonly),
            (Propagation::Slave, true, false)
        );
        let how = volume_mount(&m(json!(["bind", "rro"])), src, dst).expect("bind");
        assert!(!how.recursive && how.readonly);
        for shared in ["rshared", "shared"] {
            let e = volume_mount(&m(json!(["rbind", shared])), src, dst).expect_err(shared);
            let msg = e.to_string();
            assert!(
                msg.contains("/src") && msg.contains("/v") && msg.contains("Bidirectional"),
                "{msg}"
            );
        }
    }

    #[test]
    fn volumes_are_checked_at_load_and_rootfs_propagation_is_youkis() {
        let t = tempfile::tempdir().expect("tmp");
        let src = t.path().display().to_string();
        let file = t.path().join("f");
        std::fs::write(&file, b"x").expect("file");
        let s = with_mounts(
            json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/a", "type": "bind", "source": src, "options": ["rbind", "rprivate", "ro"]},
                {"destination": "/etc/hosts", "source": file, "options": ["bind"]}
            ]),
            json!({}),
        )
        .expect("volumes");
        assert_eq!(
            s.volumes,
            [
                Volume {
                    index: 1,
                    source: t.path().to_path_buf(),
                    destination: "/a".into(),
                    how: VolumeMount::rbind(true),
                    is_dir: true
                },
                Volume {
                    index: 2,
                    source: file.clone(),
                    destination: "/etc/hosts".into(),
                    how: VolumeMount {
                        readonly: false,
                        recursive: false,
                        propagation: Propagation::Private
                    },
                    is_dir: false
                }
            ]
        );
        let e = with_mounts(
            json!([
                {"destination": "/a", "type": "bind", "source": src, "options": ["rbind", "rprivate"]},
                {"destination": "/b", "type": "bind", "source": src, "options": ["rbind", "rshared"]}
            ]),
            json!({}),
        )
        .expect_err("rshared");
        assert!(e.to_string().contains("(for /b)"), "{e}");
        let e = with_mounts(
            json!([{"destination": "/c", "type": "bind", "source": "rel/dir"}]),
            json!({}),
        )
        .expect_err("relative");
        assert!(e.to_string().contains("not absolute"), "{e}");
        let e = with_mounts(
            json!([{"destination": "/d", "type": "bind", "source": "/nonexistent/hull-volume"}]),
            json!({}),
        )
        .expect_err("missing");
        assert!(
            e.to_string().contains("/nonexistent/hull-volume (for /d)"),
            "{e}"
        );
        // rootfsPropagation in the guest's spelling.
        let s = with_mounts(json!([]), json!({"rootfsPropagation": "rslave"})).expect("rslave");
        assert_eq!(guest_json(&s)["linux"]["rootfsPropagation"], "slave");
    }

    #[test]
    fn pod_namespaces_are_the_shared_ones_and_no_host_path_reaches_the_guest() {
        // shareProcessNamespace: pid has a path too.
        let s = cri_member(json!([
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"},
            {"type": "mount"},
            {"type": "network", "path": "/proc/4242/ns/net"}
        ]));
        assert_eq!(s.pod_namespaces(), ["pid", "ipc", "uts"]);
        assert_eq!(
            guest_json(&s)["linux"]["namespaces"],
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
        let out = guest_json(&s).to_string();
        assert!(!out.contains("/proc/1/ns"), "{out}");
        // No namespaces at all.
        assert!(cri_member(json!([])).pod_namespaces().is_empty());
    }

    #[test]
    fn an_exec_process_loses_its_host_labels() {
        let p = guest_process(
            br#"{"user": {"uid": 0, "gid": 0}, "args": ["ls"], "cwd": "/", "apparmorProfile": "a", "selinuxLabel": "s"}"#,
        )
        .expect("process");
        assert!(p.apparmor_profile().is_none() && p.selinux_label().is_none());
        let e = guest_process(br#"{"user": {"uid": 0, "gid": 0}, "args": [], "cwd": "/"}"#)
            .expect_err("no args");
        assert!(e.to_string().contains("exec process.args is empty"), "{e}");
    }
}
