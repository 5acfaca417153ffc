//! The hull-vmm backend without KVM: the VM description and command line it generates,
//! and the failures it must name before (or instead of) starting anything. Runs with a
//! real hull-vmm and a freestanding guest are in `tests/tests/hull_vmm_backend.rs`.

use super::*;

fn spec(state_dir: &Path) -> VmSpec {
    VmSpec {
        id: "t1".into(),
        state_dir: state_dir.to_path_buf(),
        sock_dir: state_dir.to_path_buf(),
        jail: None,
        kernel: "/var/cache/hull/vmlinux".into(),
        initrd: "/var/cache/hull/initramfs.cpio.gz".into(),
        cmdline: "console=ttyS0 reboot=t panic=-1 hull.log=info".into(),
        vcpus: 2,
        memory_mib: 384,
        vsock: true,
        restore: None,
        devices: Vec::new(),
    }
}

#[test]
fn vm_config_carries_the_sandbox_and_the_agent_channel() {
    let state = Path::new("/run/hull/vms/abc");
    let cfg = vm_config(&spec(state), None).expect("valid");
    assert_eq!(cfg.kernel, PathBuf::from("/var/cache/hull/vmlinux"));
    assert_eq!(cfg.kernel_format, ::hull_vmm::KernelFormat::Auto);
    assert_eq!(
        cfg.initrd,
        Some(PathBuf::from("/var/cache/hull/initramfs.cpio.gz"))
    );
    // The command line is the sandbox's, unchanged: hull-vmm appends its own
    // `virtio_mmio.device=` announcements.
    assert_eq!(cfg.cmdline, "console=ttyS0 reboot=t panic=-1 hull.log=info");
    assert_eq!((cfg.vcpus, cfg.mem_mib), (2, 384));
    assert!(cfg.shared_memory, "virtiofsd needs the memfd");
    assert!(cfg.seccomp);
    assert!(!cfg.hugepages);
    // Console on stdout, the pipe the Console reader takes (as QEMU's -serial stdio).
    assert_eq!(cfg.console, Some(PathBuf::from("/proc/self/fd/1")));
    assert!(cfg.devices.serial && cfg.devices.i8042 && !cfg.devices.debug_exit);
    // The hybrid vsock where the sandbox expects it: it listens on `<this>_1025`.
    let vsock = cfg.vsock.clone().expect("vsock");
    assert_eq!(
        vsock.uds_path,
        PathBuf::from("/run/hull/vms/abc/vsock.sock")
    );
    // A socket dir too deep for a socket address: the name alone, relative to
    // hull-vmm's working directory (the socket dir).
    let deep = Path::new("/tmp").join("d".repeat(100));
    let cfg = vm_config(&spec(&deep), None).expect("valid");
    assert_eq!(
        cfg.vsock.expect("vsock").uds_path,
        PathBuf::from("vsock.sock")
    );
    assert_eq!(vsock.guest_cid, 3);
    assert!(cfg.fs.is_none() && cfg.block.is_empty() && cfg.net.is_empty());
}

#[test]
fn vm_config_json_is_what_the_binary_reads() {
    let cfg = vm_config(&spec(Path::new("/run/hull/vms/abc")), None).expect("valid");
    let json = serde_json::to_string(&cfg).expect("json");
    let back = ::hull_vmm::VmConfig::from_json(&json).expect("hull-vmm parses it");
    assert_eq!(back, cfg);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["vsock"]["uds_path"], "/run/hull/vms/abc/vsock.sock");
    assert_eq!(v["console"], "/proc/self/fd/1");
}

#[test]
fn shared_dir_becomes_the_virtio_fs_device() {
    let state = Path::new("/run/hull/vms/abc");
    let mut s = spec(state);
    s.devices.push(VmDevice::SharedDir {
        tag: "hullshare".into(),
        host_dir: state.join("share"),
    });
    let shared = HullVmm::shared_dir(&s).expect("one dir");
    assert_eq!(shared, Some(("hullshare", state.join("share").as_path())));
    let sock = state.join("virtiofsd.sock");
    let cfg = vm_config(&s, Some(("hullshare", &sock))).expect("valid");
    let fs = cfg.fs.expect("fs");
    assert_eq!(
        (fs.tag.as_str(), fs.socket.as_path()),
        ("hullshare", sock.as_path())
    );

    s.devices.push(VmDevice::SharedDir {
        tag: "second".into(),
        host_dir: "/tmp".into(),
    });
    let e = HullVmm::shared_dir(&s).expect_err("two dirs");
    assert!(e.to_string().contains("one virtio-fs device"), "{e}");
}

#[test]
fn a_pod_tap_becomes_a_virtio_net_device_next_to_the_shared_dir() {
    let state = Path::new("/run/hull/vms/abc");
    let mut s = spec(state);
    s.devices.push(VmDevice::SharedDir {
        tag: "hullshare".into(),
        host_dir: state.join("share"),
    });
    s.devices
        .push(VmDevice::Net(crate::hypervisor::net::NetDevice {
            tap_fd: 9,
            mac: "0a:58:0a:d5:07:05".into(),
        }));
    // The NIC is not a second shared dir.
    assert!(HullVmm::shared_dir(&s).expect("one dir").is_some());
    let cfg = vm_config(&s, Some(("hullshare", &state.join("virtiofsd.sock")))).expect("valid");
    assert_eq!(cfg.net.len(), 1);
    assert_eq!(
        (cfg.net[0].tap_fd, cfg.net[0].mac.as_deref()),
        (9, Some("0a:58:0a:d5:07:05"))
    );
    // hull-vmm's own rules apply: a MAC it cannot parse is refused by name.
    s.devices
        .push(VmDevice::Net(crate::hypervisor::net::NetDevice {
            tap_fd: 10,
            mac: "not-a-mac".into(),
        }));
    let e = vm_config(&s, None).expect_err("bad mac");
    assert!(e.to_string().contains("not-a-mac"), "{e}");
}

#[test]
fn what_hull_vmm_would_refuse_is_refused_naming_the_field() {
    let state = Path::new("/run/hull/vms/abc");
    let mut s = spec(state);
    s.vcpus = 300;
    let e = vm_config(&s, None).expect_err("vcpus");
    assert!(e.to_string().contains("vcpus"), "{e}");
    s.vcpus = 41;
    let e = vm_config(&s, None).expect_err("vcpus over the MP table limit");
    assert!(e.to_string().contains("vcpus"), "{e}");
    let mut s = spec(state);
    s.cmdline = "console=ttyS0 \u{7}bell".into();
    let e = vm_config(&s, None).expect_err("cmdline");
    assert!(e.to_string().contains("cmdline"), "{e}");
    let e = vm_config(&spec(state), Some(("", Path::new("/x.sock")))).expect_err("tag");
    assert!(e.to_string().contains("tag"), "{e}");
}

#[test]
fn command_line_runs_the_binary_on_the_description() {
    let cmd = command(
        &spec(Path::new("/run/hull/vms/a")),
        Path::new("/opt/hull/hull-vmm"),
        Path::new("/run/hull/vms/a/hull-vmm.json"),
    )
    .expect("unjailed command");
    let std = cmd.as_std();
    assert_eq!(std.get_program(), "/opt/hull/hull-vmm");
    let args: Vec<_> = std
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The API socket (snapshots) in the socket dir, whole when the path fits.
    assert_eq!(
        args,
        [
            "--config",
            "/run/hull/vms/a/hull-vmm.json",
            "--api-socket",
            "/run/hull/vms/a/api.sock"
        ]
    );
}

fn backend(binary: &Path) -> HullVmm {
    HullVmm::new(HullVmmConfig {
        binary: binary.to_path_buf(),
        virtiofsd: None,
    })
}

/// What the state dir holds, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("state dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn missing_or_corrupt_kernel_is_named_before_anything_starts() {
    let d = tempfile::tempdir().expect("tempdir");
    let initrd = d.path().join("initrd.img");
    std::fs::write(&initrd, [0x1f, 0x8b, 8, 0]).expect("initrd");
    let junk = d.path().join("junk");
    std::fs::write(&junk, b"not a kernel").expect("junk");
    let state = d.path().join("vm");
    std::fs::create_dir(&state).expect("state");

    for (kernel, want) in [
        (d.path().join("missing-vmlinux"), "does not exist"),
        (junk.clone(), "is not an ELF vmlinux or a bzImage"),
    ] {
        let mut s = spec(&state);
        s.kernel = kernel.clone();
        s.initrd = initrd.clone();
        // /bin/true would "run" any VM: it must never be started.
        let mut hv = backend(Path::new("/bin/true"));
        let e = hv.launch(&s).await.expect_err("must fail");
        let msg = e.to_string();
        assert!(
            msg.contains(&*kernel.to_string_lossy()) && msg.contains(want),
            "{msg}"
        );
        assert!(hv.pids().is_empty(), "nothing started");
        assert!(
            entries(&state).is_empty(),
            "nothing written: {:?}",
            entries(&state)
        );
        hv.stop(Duration::from_millis(100))
            .await
            .expect("stop is a no-op");
    }
    let mut s = spec(&state);
    s.initrd = junk.clone();
    s.kernel = d.path().join("elf-magic");
    std::fs::write(&s.kernel, b"\x7fELF").expect("elf magic");
    let e = backend(Path::new("/bin/true"))
        .launch(&s)
        .await
        .expect_err("initrd");
    assert!(e.to_string().contains("initrd"), "{e}");
}

#[tokio::test]
async fn missing_binary_is_named_and_nothing_runs() {
    let d = tempfile::tempdir().expect("tempdir");
    let kernel = d.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF\x02\x01\x01").expect("kernel");
    let initrd = d.path().join("initrd.img");
    std::fs::write(&initrd, [0x1f, 0x8b, 8, 0]).expect("initrd");
    let state = d.path().join("vm");
    std::fs::create_dir(&state).expect("state");
    let mut s = spec(&state);
    s.kernel = kernel;
    s.initrd = initrd;
    let mut hv = backend(Path::new("/nonexistent/bin/hull-vmm"));
    let e = hv.launch(&s).await.expect_err("must fail");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/bin/hull-vmm") && msg.contains("hull-vmm"),
        "{msg}"
    );
    assert!(hv.pids().is_empty());
    assert!(!state.join(VSOCK_SOCK).exists());
}

#[tokio::test]
async fn a_shared_dir_without_virtiofsd_names_virtiofsd() {
    let d = tempfile::tempdir().expect("tempdir");
    let kernel = d.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF\x02\x01\x01").expect("kernel");
    let initrd = d.path().join("initrd.img");
    std::fs::write(&initrd, [0x1f, 0x8b, 8, 0]).expect("initrd");
    let state = d.path().join("vm");
    std::fs::create_dir(&state).expect("state");
    let mut s = spec(&state);
    s.kernel = kernel;
    s.initrd = initrd;
    s.devices.push(VmDevice::SharedDir {
        tag: "hullshare".into(),
        host_dir: d.path().to_path_buf(),
    });
    let mut hv = backend(Path::new("/bin/true"));
    let e = hv.launch(&s).await.expect_err("no virtiofsd");
    assert!(e.to_string().contains("virtiofsd"), "{e}");
    assert!(hv.pids().is_empty());
}

/// A helper that exits before creating the vsock socket (what hull-vmm does when it
/// cannot build the VM) is reported with its status and stderr, and reaped.
#[tokio::test]
async fn a_vmm_that_exits_before_its_socket_is_reported_with_its_stderr() {
    let d = tempfile::tempdir().expect("tempdir");
    let kernel = d.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF\x02\x01\x01").expect("kernel");
    let initrd = d.path().join("initrd.img");
    std::fs::write(&initrd, [0x1f, 0x8b, 8, 0]).expect("initrd");
    let fake = d.path().join("fake-hull-vmm");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'hull-vmm: error: cannot load the kernel: bad ELF' >&2\nexit 2\n",
    )
    .expect("fake");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let state = d.path().join("vm");
    std::fs::create_dir(&state).expect("state");
    let mut s = spec(&state);
    s.kernel = kernel;
    s.initrd = initrd;
    let mut hv = backend(&fake);
    let e = hv.launch(&s).await.expect_err("must fail");
    let msg = e.to_string();
    assert!(
        msg.contains("hull-vmm") && msg.contains("exit code 2"),
        "{msg}"
    );
    assert!(msg.contains("cannot load the kernel"), "{msg}");
    assert!(hv.pids().is_empty(), "reaped");
    // The description it was given is in the state dir (removed with it by the sandbox).
    let json = std::fs::read_to_string(state.join("hull-vmm.json")).expect("description");
    ::hull_vmm::VmConfig::from_json(&json).expect("valid description");
}
