//! What `containerd-shim-hull-v2 delete` needs when the shim itself is gone (killed,
//! crashed): the sandbox's [`Leftovers`] (state dir, VM processes, the pod's cgroups
//! and network), copied next to the bundle as `hull-sandbox.json` once they are known
//! and removed on a clean end. The same record lives in the VM's state dir for `hull
//! gc`, for when containerd forgot the task; both are cleaned by [`Leftovers::clean`].

use std::path::Path;

use crate::sandbox::leftovers::Leftovers;

pub const FILE: &str = "hull-sandbox.json";

/// Writes the bundle's copy of `leftovers`.
pub fn write(bundle: &Path, leftovers: &Leftovers) {
    if let Err(e) = leftovers.write(&bundle.join(FILE)) {
        tracing::warn!(error = %e, "cannot write the sandbox record into the bundle");
    }
}

/// The bundle's record, if it has a readable one.
pub fn read(bundle: &Path) -> Option<Leftovers> {
    match Leftovers::read(&bundle.join(FILE)) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the bundle's sandbox record");
            None
        }
    }
}

pub fn remove(bundle: &Path) {
    let _ = std::fs::remove_file(bundle.join(FILE));
}

/// Cleans what `leftovers` names (see [`Leftovers::clean`]), saying what it could not.
pub fn clean(leftovers: &Leftovers) {
    match leftovers.clean() {
        Ok(done) => {
            tracing::info!(state_dir = %leftovers.state_dir.display(), %done, "sandbox leftovers removed")
        }
        Err(e) => tracing::warn!(error = %e, "removing the sandbox's leftovers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clean() {
        let t = tempfile::tempdir().expect("tmp");
        let state = t.path().join("vms/abc");
        std::fs::create_dir_all(state.join("share")).expect("state");
        let r = Leftovers {
            state_dir: state.clone(),
            pids: vec![u32::MAX],
            ..Default::default()
        };
        write(t.path(), &r);
        assert_eq!(read(t.path()), Some(r.clone()));
        clean(&r);
        assert!(!state.exists());
        remove(t.path());
        assert_eq!(read(t.path()), None);
    }
}
