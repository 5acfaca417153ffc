use std::cell::RefCell;
use std::collections::HashSet;

use super::*;

/// Records what bring-up would do; `mounted` are targets that are already mount points,
/// `failing` are targets whose mount fails.
#[derive(Default)]
struct Recorder {
    calls: RefCell<Vec<String>>,
    mounted: HashSet<&'static str>,
    failing: HashSet<&'static str>,
}

impl MountOps for Recorder {
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.calls
            .borrow_mut()
            .push(format!("mkdir {} {mode:o}", path.display()));
        Ok(())
    }
    fn is_mountpoint(&self, path: &Path) -> io::Result<bool> {
        Ok(self.mounted.iter().any(|m| Path::new(m) == path))
    }
    fn mount(&self, spec: &MountSpec) -> io::Result<()> {
        if self.failing.contains(spec.target) {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        self.calls.borrow_mut().push(format!(
            "mount {} {} {}",
            spec.fstype,
            spec.target,
            spec.data.unwrap_or("-")
        ));
        Ok(())
    }
}

fn mounts_of(r: &Recorder) -> Vec<String> {
    r.calls
        .borrow()
        .iter()
        .filter(|c| c.starts_with("mount"))
        .cloned()
        .collect()
}

#[test]
fn base_mounts_in_order_with_options() {
    let r = Recorder::default();
    mount_all(&r, &early_mounts()).unwrap();
    mount_all(&r, &base_mounts()).unwrap();
    assert_eq!(
        mounts_of(&r),
        vec![
            "mount devtmpfs /dev mode=0755",
            "mount proc /proc -",
            "mount sysfs /sys -",
            "mount devpts /dev/pts newinstance,ptmxmode=0666,mode=0620,gid=5",
            "mount tmpfs /dev/shm mode=1777",
            "mount tmpfs /run mode=0755",
            "mount tmpfs /tmp mode=1777",
            "mount cgroup2 /sys/fs/cgroup -",
        ]
    );
}

#[test]
fn every_target_is_created_before_mounting() {
    let r = Recorder::default();
    mount_all(&r, &base_mounts()).unwrap();
    let calls = r.calls.borrow();
    for spec in base_mounts() {
        let mkdir = calls
            .iter()
            .position(|c| c.starts_with(&format!("mkdir {} ", spec.target)));
        let mount = calls
            .iter()
            .position(|c| c.contains(&format!(" {} ", spec.target)) && c.starts_with("mount"));
        assert!(
            mkdir.is_some() && mkdir < mount,
            "{} : {calls:?}",
            spec.target
        );
    }
}

#[test]
fn parents_are_mounted_before_children() {
    let specs: Vec<MountSpec> = early_mounts().into_iter().chain(base_mounts()).collect();
    for (i, child) in specs.iter().enumerate() {
        for (j, parent) in specs.iter().enumerate() {
            if i != j && Path::new(child.target).starts_with(parent.target) {
                assert!(j < i, "{} must come after {}", child.target, parent.target);
            }
        }
    }
}

#[test]
fn already_mounted_targets_are_skipped() {
    let r = Recorder {
        mounted: HashSet::from(["/dev"]),
        ..Default::default()
    };
    mount_all(&r, &early_mounts()).unwrap();
    assert_eq!(mounts_of(&r), vec!["mount proc /proc -"]);
}

#[test]
fn required_mount_failure_is_fatal() {
    let r = Recorder {
        failing: HashSet::from(["/sys"]),
        ..Default::default()
    };
    let err = mount_all(&r, &base_mounts()).unwrap_err();
    assert!(
        matches!(err, InitError::Mount { target: "/sys", .. }),
        "{err}"
    );
    // Nothing after /sys was attempted.
    assert!(mounts_of(&r).is_empty(), "{:?}", mounts_of(&r));
}

#[test]
fn optional_mount_failure_is_not_fatal() {
    let r = Recorder {
        failing: HashSet::from([CGROUP_ROOT]),
        ..Default::default()
    };
    mount_all(&r, &base_mounts()).unwrap();
    assert_eq!(mounts_of(&r).len(), base_mounts().len() - 1);
}

fn temp_cgroup(controllers: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hull-agent-cgroup-test-{}-{}",
        std::process::id(),
        controllers.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
    std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
    dir
}

#[test]
fn controllers_are_enabled_in_one_write() {
    let dir = temp_cgroup("cpuset cpu io memory pids\n");
    let enabled = enable_controllers(&dir).unwrap();
    assert_eq!(enabled, vec!["cpuset", "cpu", "io", "memory", "pids"]);
    let written = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
    assert_eq!(written, "+cpuset +cpu +io +memory +pids");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn no_controllers_is_fine_and_missing_root_is_an_error() {
    let dir = temp_cgroup("");
    assert!(enable_controllers(&dir).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(
        enable_controllers(&dir),
        Err(CgroupError::Read { .. })
    ));
}
