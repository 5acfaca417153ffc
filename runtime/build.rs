//! Records the git revision hull is built from (`HULL_GIT_REVISION`, empty when the
//! source is not a git checkout or git is missing), for `containerd-shim-hull-v2 -v`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=HULL_GIT_REVISION={revision}");
    // Rebuilt when HEAD moves (a commit, a checkout); a worktree has its own HEAD and
    // shares the refs.
    for dir in [
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ]
    .into_iter()
    .flatten()
    {
        let dir = PathBuf::from(dir);
        for f in ["HEAD", "packed-refs"] {
            if dir.join(f).exists() {
                println!("cargo:rerun-if-changed={}", dir.join(f).display());
            }
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let r = dir.join(&branch);
            if r.exists() {
                println!("cargo:rerun-if-changed={}", r.display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
