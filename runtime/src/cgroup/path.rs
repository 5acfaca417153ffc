//! The pure part of host cgroups: an OCI `linux.cgroupsPath` turned into a path under a
//! hierarchy's root (cgroupfs and systemd forms, as runc reads them), and the memory
//! arithmetic between a VM's size, hull's host overhead and a cgroup's limit.

use std::path::{Component, Path, PathBuf};

use super::CgroupError;

const MIB: u64 = 1 << 20;

/// `linux.cgroupsPath` as a path relative to a hierarchy's root.
///
/// - cgroupfs form (`/k8s.io/<id>`, `/default/<id>`, `kubepods/pod1/<id>`): the path
///   itself, relative to the root whether or not it starts with `/` (runc's rule);
/// - systemd form (`slice:prefix:name`, what containerd passes with
///   `SystemdCgroup = true`): `<expanded slice>/<prefix>-<name>.scope`, the slice
///   expanded as systemd nests it (`a-b.slice` is `a.slice/a-b.slice`), an empty slice
///   being `system.slice`, and a name ending in `.slice` naming a slice itself.
pub fn parse_cgroups_path(raw: &str) -> Result<PathBuf, CgroupError> {
    let bad = |why: &str| CgroupError::BadPath {
        path: raw.to_string(),
        why: why.to_string(),
    };
    let rel = if !raw.contains('/') && raw.matches(':').count() == 2 {
        systemd_path(raw).map_err(|why| bad(&why))?
    } else {
        PathBuf::from(raw.trim_start_matches('/'))
    };
    let mut clean = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            _ => return Err(bad("`..` is not allowed")),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(bad("it names the root cgroup"));
    }
    Ok(clean)
}

fn systemd_path(raw: &str) -> Result<PathBuf, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
    if name.is_empty() {
        return Err("systemd form slice:prefix:name with an empty name".into());
    }
    if name.ends_with(".slice") {
        // A slice names its whole nesting itself.
        return expand_slice(name);
    }
    let mut path = expand_slice(if slice.is_empty() {
        "system.slice"
    } else {
        slice
    })?;
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Ok(path)
}

/// `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<PathBuf, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!(
            "{slice:?} is not a systemd slice (no .slice suffix)"
        ));
    };
    if stem == "-" {
        return Ok(PathBuf::new());
    }
    if stem.is_empty()
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
        || stem.contains('/')
    {
        return Err(format!("{slice:?} is not a valid slice name"));
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

/// The VM size that fits under a memory limit the host already has (`inherited`, in
/// bytes: the leaf's own if it exists, else the smallest of its ancestors'): at most
/// limit - overhead; an error naming the cgroup when that is below `min_mib`.
pub fn fit_vm(
    vm_mib: u32,
    inherited: Option<u64>,
    overhead_mib: u32,
    min_mib: u32,
    cgroup: &Path,
) -> Result<u32, CgroupError> {
    let Some(limit) = inherited else {
        return Ok(vm_mib);
    };
    let room = (limit / MIB).saturating_sub(u64::from(overhead_mib));
    if room < u64::from(min_mib) {
        return Err(CgroupError::TooSmall {
            cgroup: cgroup.to_path_buf(),
            limit_mib: limit / MIB,
            room_mib: room,
            overhead_mib,
            min_mib,
        });
    }
    Ok(vm_mib.min(u32::try_from(room).unwrap_or(u32::MAX)))
}

/// The limit hull gives a cgroup it creates: the VM's memory plus the host overhead.
pub fn own_limit_bytes(vm_mib: u32, overhead_mib: u32) -> u64 {
    (u64::from(vm_mib) + u64::from(overhead_mib)) * MIB
}

/// A v1 `memory.limit_in_bytes` or v2 `memory.max` value: None when unlimited.
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    // v1 reports "unlimited" as PAGE_COUNTER_MAX pages (about 2^63 rounded to a page).
    t.parse::<u64>().ok().filter(|v| *v < (1 << 62))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths() {
        assert_eq!(
            parse_cgroups_path("/default/c1").expect("ctr"),
            PathBuf::from("default/c1")
        );
        assert_eq!(
            parse_cgroups_path("/k8s.io/abc").expect("cri"),
            PathBuf::from("k8s.io/abc")
        );
        assert_eq!(
            parse_cgroups_path("kubepods/burstable/pod1/abc").expect("relative"),
            PathBuf::from("kubepods/burstable/pod1/abc")
        );
        assert_eq!(
            parse_cgroups_path("/a/./b/").expect("dots"),
            PathBuf::from("a/b")
        );
        for bad in ["", "/", "/a/../b", "..", "./"] {
            let e = parse_cgroups_path(bad).expect_err(bad);
            assert!(e.to_string().contains("cgroupsPath"), "{e}");
        }
    }

    #[test]
    fn systemd_paths() {
        assert_eq!(
            parse_cgroups_path("kubepods-burstable-pod12.slice:cri-containerd:abc").expect("cri"),
            PathBuf::from("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/cri-containerd-abc.scope")
        );
        assert_eq!(
            parse_cgroups_path("system.slice:containerd:c1").expect("ctr"),
            PathBuf::from("system.slice/containerd-c1.scope")
        );
        assert_eq!(
            parse_cgroups_path(":docker:x").expect("default slice"),
            PathBuf::from("system.slice/docker-x.scope")
        );
        assert_eq!(
            parse_cgroups_path("-.slice::x").expect("root slice"),
            PathBuf::from("x.scope")
        );
        assert_eq!(
            parse_cgroups_path("a.slice::a-b.slice").expect("a slice"),
            PathBuf::from("a.slice/a-b.slice")
        );
        for bad in ["nodot:p:x", "a--b.slice:p:x", "a.slice:p:", "-a.slice:p:x"] {
            let e = parse_cgroups_path(bad).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn vm_fits_under_an_inherited_limit() {
        let cg = Path::new("/sys/fs/cgroup/memory/pod");
        assert_eq!(fit_vm(640, None, 192, 64, cg).expect("no limit"), 640);
        assert_eq!(
            fit_vm(640, Some(2048 * MIB), 192, 64, cg).expect("room"),
            640
        );
        // Exactly limit - overhead.
        assert_eq!(
            fit_vm(640, Some(832 * MIB), 192, 64, cg).expect("exact"),
            640
        );
        // Shrunk to limit - overhead.
        assert_eq!(
            fit_vm(640, Some(512 * MIB + 5), 192, 64, cg).expect("shrunk"),
            320
        );
        assert_eq!(
            fit_vm(640, Some(256 * MIB), 192, 64, cg).expect("minimum"),
            64
        );
        let e = fit_vm(640, Some(255 * MIB), 192, 64, cg).expect_err("too small");
        let text = e.to_string();
        assert!(
            text.contains("/sys/fs/cgroup/memory/pod")
                && text.contains("255 MiB")
                && text.contains("63 MiB"),
            "{text}"
        );
        let e = fit_vm(640, Some(100 * MIB), 192, 64, cg).expect_err("below the overhead");
        assert!(e.to_string().contains("0 MiB"), "{e}");
    }

    #[test]
    fn own_limit_and_limit_values() {
        assert_eq!(own_limit_bytes(640, 192), 832 * MIB);
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 * MIB));
        assert_eq!(parse_limit("junk"), None);
    }
}
