//! `containerd-shim-hull-v2 -v` prints its name, version and git revision, as
//! containerd's own shims do (`containerd-shim-runc-v2 -v`), and nothing else runs: no
//! containerd address or ttrpc environment is needed.

use std::process::Command;

use hull_tests::{output_text, target_bin};

#[test]
fn the_shim_prints_its_version() {
    let shim = target_bin("containerd-shim-hull-v2");
    assert!(
        shim.exists(),
        "{} is missing: cargo build --workspace --bins",
        shim.display()
    );
    for flag in ["-v", "-version", "--version"] {
        let out = Command::new(&shim)
            .arg(flag)
            .env_remove("TTRPC_ADDRESS")
            .env_remove("GRPC_ADDRESS")
            .output()
            .expect("run the shim");
        assert!(out.status.success(), "{flag}: {}", output_text(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&"containerd-shim-hull-v2:"),
            "{flag}: {}",
            output_text(&out)
        );
        let version = format!("  Version: {}", env!("CARGO_PKG_VERSION"));
        assert!(
            lines.contains(&version.as_str()),
            "{flag}: {}",
            output_text(&out)
        );
        let revision = lines
            .iter()
            .find_map(|l| l.strip_prefix("  Revision: "))
            .unwrap_or_else(|| panic!("{flag}: no revision line: {}", output_text(&out)));
        assert!(
            revision == "unknown"
                || (revision.len() >= 40 && revision[..40].bytes().all(|b| b.is_ascii_hexdigit())),
            "{flag}: revision {revision:?}"
        );
        assert!(out.stderr.is_empty(), "{flag}: {}", output_text(&out));
    }
}
