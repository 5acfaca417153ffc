//! `hull install-containerd`: registers hull as a runtime of containerd's CRI plugin
//! (runtime class handler `hull`, runtime `io.containerd.hull.v2`) in containerd's
//! config file. Idempotent: a config that already has the `hull` runtime is left
//! untouched. Only version 2 configs (containerd 1.5+, the default since) are edited.

use std::path::Path;

pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The table hull adds.
pub const RUNTIME_TABLE: &str = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull]"#;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: a version 1 containerd config; hull edits version 2 configs only (containerd config migrate)")]
    Version1(String),
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Added,
    AlreadyThere,
}

/// The config text with hull's runtime added, or None if it is already there.
pub fn add_runtime(text: &str, hull_config: &Path) -> Option<String> {
    if text.contains("containerd.runtimes.hull]") || text.contains("containerd.runtimes.hull.") {
        return None;
    }
    let mut out = text.to_string();
    if out.trim().is_empty() {
        out = "version = 2\n".into();
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "\n# hull: containers in microVMs (RuntimeClass handler \"hull\"); added by `hull install-containerd`\n\
         {RUNTIME_TABLE}\n  runtime_type = \"io.containerd.hull.v2\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull.options]\n  ConfigPath = \"{}\"\n",
        hull_config.display()
    ));
    Some(out)
}

fn is_version1(text: &str) -> bool {
    let has_v2 = text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("version") && l.split('=').nth(1).map(str::trim) == Some("2")
    });
    !text.trim().is_empty() && !has_v2
}

/// Adds hull's runtime to the containerd config at `path` (created if missing).
pub fn install(path: &Path, hull_config: &Path) -> Result<Outcome, InstallError> {
    let io = |source| InstallError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let Some(new) = add_runtime(&text, hull_config) else {
        return Ok(Outcome::AlreadyThere);
    };
    if is_version1(&text) {
        return Err(InstallError::Version1(path.display().to_string()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("toml.hull-tmp");
    std::fs::write(&tmp, new).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(Outcome::Added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_and_valid_toml() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("etc/containerd/config.toml");
        let hc = Path::new("/etc/hull/config.toml");
        assert_eq!(install(&p, hc).expect("create"), Outcome::Added);
        assert_eq!(install(&p, hc).expect("again"), Outcome::AlreadyThere);
        let text = std::fs::read_to_string(&p).expect("read");
        let v: toml::Value = toml::from_str(&text).expect("valid TOML");
        let hull = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["hull"];
        assert_eq!(hull["runtime_type"].as_str(), Some("io.containerd.hull.v2"));
        assert_eq!(hull["options"]["ConfigPath"].as_str(), Some("/etc/hull/config.toml"));
        // An existing v2 config keeps its content.
        let p2 = t.path().join("c2.toml");
        std::fs::write(&p2, "version = 2\n[grpc]\n  address = \"/x.sock\"").expect("write");
        assert_eq!(install(&p2, hc).expect("add"), Outcome::Added);
        let v: toml::Value = toml::from_str(&std::fs::read_to_string(&p2).expect("read")).expect("toml");
        assert_eq!(v["grpc"]["address"].as_str(), Some("/x.sock"));
        // A version 1 config is refused by name.
        let p3 = t.path().join("c3.toml");
        std::fs::write(&p3, "[plugins.cri]\n").expect("write");
        let e = install(&p3, hc).expect_err("v1");
        assert!(e.to_string().contains("version 1"), "{e}");
    }
}
