//! Finds the container's command in its rootfs on the host, before the VM boots, so a
//! command that is not there is reported at once ("not found", exit 127) with nothing
//! started. Symlinks are resolved inside the rootfs, as the container will see them.
//! Commands under a volume (or searched through a PATH dir under one) are not checked:
//! their content is the user's host dir, which may change until the container runs.

use std::path::{Component, Path, PathBuf};

/// Resolves `path` (absolute, container view) inside `root`, following symlinks
/// within the root; returns the host path if it exists.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<std::ffi::OsString> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut cur: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let host = cur
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&part);
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            if target.is_absolute() {
                cur.clear();
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => pending.push(n.to_os_string()),
                    Component::ParentDir => pending.push("..".into()),
                    _ => {}
                }
            }
        } else {
            cur.push(part);
        }
    }
    Some(cur.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn under_any(path: &str, dirs: &[String]) -> bool {
    dirs.iter().any(|d| Path::new(path).starts_with(d))
}

/// `Ok` when `cmd` is found (or cannot be judged on the host); `Err(searched)` with
/// what was searched otherwise.
pub fn check(root: &Path, cmd: &str, env: &[String], volume_dirs: &[String]) -> Result<(), String> {
    if cmd.contains('/') {
        if !cmd.starts_with('/') || under_any(cmd, volume_dirs) {
            return Ok(()); // relative to the cwd, or in a volume: the guest decides
        }
        return match resolve_in_root(root, cmd) {
            Some(p) if is_executable_file(&p) => Ok(()),
            _ => Err(cmd.to_string()),
        };
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(crate::spec::defaults::DEFAULT_PATH);
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        if under_any(dir, volume_dirs) {
            return Ok(());
        }
        if let Some(p) = resolve_in_root(root, &format!("{dir}/{cmd}")) {
            if is_executable_file(&p) {
                return Ok(());
            }
        }
    }
    Err(format!("PATH={path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn commands_are_found_through_symlinks_inside_the_root() {
        let t = tempfile::tempdir().expect("tmp");
        let r = t.path();
        std::fs::create_dir_all(r.join("bin")).expect("bin");
        std::fs::create_dir_all(r.join("usr")).expect("usr");
        std::fs::write(r.join("bin/busybox"), b"x").expect("bb");
        std::fs::set_permissions(
            r.join("bin/busybox"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        symlink("/bin/busybox", r.join("bin/sh")).expect("sh");
        symlink("../bin", r.join("usr/bin")).expect("usr/bin");
        std::fs::write(r.join("bin/data"), b"x").expect("data");
        // A host-absolute link must resolve inside the root, not on the host.
        symlink("/etc/passwd", r.join("bin/hostlink")).expect("hostlink");
        let env = vec!["PATH=/usr/bin".to_string()];
        assert!(check(r, "sh", &env, &[]).is_ok());
        assert!(check(r, "/bin/sh", &env, &[]).is_ok());
        assert!(check(r, "/usr/bin/busybox", &env, &[]).is_ok());
        assert!(check(r, "nope", &env, &[])
            .expect_err("nope")
            .contains("PATH=/usr/bin"));
        assert!(check(r, "/bin/data", &env, &[]).is_err(), "not executable");
        assert!(
            check(r, "/bin/hostlink", &env, &[]).is_err(),
            "resolved on the host"
        );
        assert!(check(r, "/bin", &env, &[]).is_err(), "a directory");
        assert!(
            check(r, "/tools/x", &env, &["/tools".to_string()]).is_ok(),
            "volumes are not judged"
        );
        assert!(check(r, "./rel", &env, &[]).is_ok());
    }
}
