use std::process::Command;

use super::*;

fn status(pid: i32, kind: ExitKind) -> ExitStatus {
    ExitStatus {
        pid,
        kind,
        exited_at: SystemTime::UNIX_EPOCH,
    }
}

#[test]
fn exit_codes_follow_the_shell_convention() {
    assert_eq!(status(1, ExitKind::Code(3)).code(), 3);
    assert_eq!(status(1, ExitKind::Signal(9)).code(), 137);
}

#[test]
fn watcher_gets_the_status() {
    let mut r = Registry::default();
    let now = Instant::now();
    let mut rx = r.watch(10, now);
    assert!(rx.try_recv().is_err());
    r.exited(status(10, ExitKind::Code(0)), now);
    assert_eq!(rx.try_recv().unwrap().kind, ExitKind::Code(0));
    assert_eq!(r.unclaimed_len(), 0);
}

#[test]
fn every_watcher_of_a_pid_gets_it() {
    let mut r = Registry::default();
    let now = Instant::now();
    let mut a = r.watch(10, now);
    let mut b = r.watch(10, now);
    r.exited(status(10, ExitKind::Signal(15)), now);
    assert_eq!(a.try_recv().unwrap().code(), 143);
    assert_eq!(b.try_recv().unwrap().code(), 143);
}

#[test]
fn exit_before_watch_is_kept_then_claimed_once() {
    let mut r = Registry::default();
    let now = Instant::now();
    r.exited(status(11, ExitKind::Code(7)), now);
    assert_eq!(r.unclaimed_len(), 1);
    let mut rx = r.watch(11, now + Duration::from_secs(1));
    assert_eq!(rx.try_recv().unwrap().code(), 7);
    assert_eq!(r.unclaimed_len(), 0);
    // Claimed: a second watch waits for a new process with that pid.
    let mut again = r.watch(11, now);
    assert!(again.try_recv().is_err());
}

#[test]
fn unclaimed_statuses_expire() {
    let mut r = Registry::default();
    let now = Instant::now();
    r.exited(status(12, ExitKind::Code(1)), now);
    let mut rx = r.watch(12, now + UNCLAIMED_TTL + Duration::from_secs(1));
    assert!(
        rx.try_recv().is_err(),
        "expired status must not be delivered"
    );
    assert_eq!(r.unclaimed_len(), 0);
}

#[test]
fn unclaimed_statuses_are_bounded() {
    let mut r = Registry::default();
    let now = Instant::now();
    for pid in 0..(UNCLAIMED_MAX as i32 + 10) {
        r.exited(status(pid, ExitKind::Code(0)), now);
    }
    assert_eq!(r.unclaimed_len(), UNCLAIMED_MAX);
    // The oldest went first.
    assert!(r.watch(0, now).try_recv().is_err());
    assert!(r.watch(UNCLAIMED_MAX as i32 + 9, now).try_recv().is_ok());
}

#[test]
fn a_reused_pid_keeps_its_newest_status() {
    let mut r = Registry::default();
    let t0 = Instant::now();
    r.exited(status(13, ExitKind::Code(1)), t0);
    r.exited(status(13, ExitKind::Code(2)), t0 + Duration::from_secs(30));
    // The first entry's expiry must not remove the second one.
    let mut rx = r.watch(13, t0 + UNCLAIMED_TTL + Duration::from_secs(1));
    assert_eq!(rx.try_recv().unwrap().code(), 2);
}

#[test]
fn dropped_watcher_is_harmless() {
    let mut r = Registry::default();
    let now = Instant::now();
    drop(r.watch(14, now));
    r.exited(status(14, ExitKind::Code(0)), now);
    assert_eq!(r.unclaimed_len(), 0);
}

/// Real children through SIGCHLD. One test function on purpose: `waitpid(-1)` reaps
/// every child of the test process, so two reaper tests in parallel would steal each
/// other's children.
#[tokio::test(flavor = "current_thread")]
async fn reaps_real_children() {
    let reaper = Reaper::start().unwrap();

    // Watch registered before the exit, atomically with the spawn.
    let (_, rx) = reaper
        .spawn_watched(|| {
            let child = Command::new("sh").args(["-c", "exit 7"]).spawn()?;
            Ok::<_, std::io::Error>(((), child.id() as i32))
        })
        .unwrap();
    let st = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.kind, ExitKind::Code(7));

    // The children below are reaped by the reaper, never by `Child::wait`: that is the
    // point of the test (hence the clippy allowances).
    // Exit (and reap) before watch: the status is kept for the late watcher.
    #[allow(clippy::zombie_processes)]
    let child = Command::new("sh")
        .args(["-c", "kill -9 $$"])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while reaper.lock().unclaimed_len() == 0 {
        assert!(Instant::now() < deadline, "child was not reaped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = tokio::time::timeout(Duration::from_secs(1), reaper.watch(pid))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.kind, ExitKind::Signal(9));
    assert_eq!(st.code(), 137);

    // An orphan-like child nobody watches is reaped all the same (no zombie left).
    #[allow(clippy::zombie_processes)]
    let child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let zombie =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if gone && !zombie {
            break;
        }
        assert!(Instant::now() < deadline, "child {pid} left behind");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
