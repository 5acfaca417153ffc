//! cgroup v2 at the guest's root: delegate every available controller to child cgroups
//! so containers can be limited.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("no controller could be enabled in {path} (tried {tried}): {source}")]
    NoneEnabled {
        path: PathBuf,
        tried: String,
        source: io::Error,
    },
}

/// Writes `+ctrl` for every controller listed in `root/cgroup.controllers` into
/// `root/cgroup.subtree_control`, and returns the ones enabled.
///
/// All at once first (one write, as the kernel prefers); if the kernel refuses that,
/// one by one so a single unavailable controller does not cost the others.
pub fn enable_controllers(root: &Path) -> Result<Vec<String>, CgroupError> {
    let controllers_path = root.join("cgroup.controllers");
    let listed =
        std::fs::read_to_string(&controllers_path).map_err(|source| CgroupError::Read {
            path: controllers_path,
            source,
        })?;
    let available: Vec<String> = listed.split_whitespace().map(str::to_owned).collect();
    if available.is_empty() {
        return Ok(Vec::new());
    }
    let control = root.join("cgroup.subtree_control");
    let all: Vec<String> = available.iter().map(|c| format!("+{c}")).collect();
    let first_err = match write_control(&control, &all.join(" ")) {
        Ok(()) => return Ok(available),
        Err(e) => e,
    };
    let enabled: Vec<String> = available
        .into_iter()
        .filter(|c| match write_control(&control, &format!("+{c}")) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(controller = %c, error = %e, "cgroup controller not enabled");
                false
            }
        })
        .collect();
    if enabled.is_empty() {
        return Err(CgroupError::NoneEnabled {
            path: control,
            tried: all.join(" "),
            source: first_err,
        });
    }
    Ok(enabled)
}

/// One write(2) of `line`, as cgroupfs expects.
fn write_control(path: &Path, line: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(line.as_bytes())
}
