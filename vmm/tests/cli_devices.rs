//! The binary's virtio flags: devices announced on the guest's command line in slot
//! order, the hybrid socket's lifetime, bad device configurations -> status 2, and
//! `--no-seccomp`.

mod common;

use std::process::Command;

use common::{guests, kvm_available, scratch};

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
}

#[test]
fn bad_device_configurations_exit_2() {
    let dir = scratch("cli-dev-bad");
    let k = guests().elf64.to_str().expect("utf-8 path").to_string();
    let sock = dir.join("v.sock");
    let sock = sock.to_str().expect("utf-8 path");
    for args in [
        vec!["--vsock", "2,/tmp/x.sock"],           // reserved CID
        vec!["--vsock", "3"],                       // no path
        vec!["--block", "/nonexistent/disk.img"],   // missing file
        vec!["--block", "/dev/null,rw"],            // unknown option
        vec!["--net", "987654"],                    // not an open fd
        vec!["--net", "0,mac=zz:00:00:00:00:00"],   // bad MAC
        vec!["--fs", "/nonexistent/fs.sock,share"], // no virtiofsd there
        vec!["--fs", "/tmp/fs.sock,"],              // empty tag
    ] {
        let out = vmm()
            .args(["--kernel", &k])
            .args(&args)
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The hybrid socket path must not exist yet.
    std::fs::write(sock, b"").expect("file");
    let out = vmm()
        .args(["--kernel", &k, "--vsock", &format!("3,{sock}")])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn devices_are_announced_in_slot_order() {
    if !kvm_available("devices_are_announced_in_slot_order") {
        return;
    }
    let dir = scratch("cli-dev-run");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).expect("disk");
    let sock = dir.join("v.sock");
    for seccomp in [true, false] {
        let mut cmd = vmm();
        cmd.arg("--kernel")
            .arg(&guests().elf64)
            .args(["--cmdline", "act=x", "--debug-exit", "--block"])
            .arg(format!("{},ro,id=d0", disk.display()))
            .arg("--vsock")
            .arg(format!("3,{}", sock.display()))
            .arg("--console")
            .arg(dir.join("console.txt"));
        if !seccomp {
            cmd.arg("--no-seccomp");
        }
        let out = cmd.output().expect("run");
        assert_eq!(
            out.status.code(),
            Some(0x55),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let console = std::fs::read_to_string(dir.join("console.txt")).expect("console");
        assert!(
            console.contains(
                "cmdline=act=x virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6\n"
            ),
            "{console}"
        );
        assert!(!sock.exists(), "hybrid socket removed at exit");
    }
}
