//! Helpers for the integration tests: the guests (built once per test binary), a
//! per-test scratch directory, and the "can this host run VMs at all" gate.
#![allow(dead_code)]

pub mod guests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub use guests::Guests;

/// The guests, or why they could not be built (then tests fail: binutils are a
/// documented build dependency of the tests, not something to skip over).
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Result<Guests, String>> = OnceLock::new();
    let built = GUESTS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("hull-guests-{}", std::process::id()));
        guests::build_guests(&dir)
    });
    match built {
        Ok(g) => g,
        Err(e) => panic!("building the test guests: {e}"),
    }
}

/// True when this host can run VMs; otherwise prints why the test is skipped.
pub fn kvm_available(test: &str) -> bool {
    let h = hull_vmm::host_support();
    if h.can_run_vms() {
        true
    } else {
        println!("SKIP {test}: {}", h.summary());
        false
    }
}

/// A fresh directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "hull-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
