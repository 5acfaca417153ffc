//! End to end on /dev/kvm: a freestanding guest (`tests/guests/virtio64.S`, `act=v`)
//! brings up the virtio-vsock device through the virtio-mmio registers and its own
//! virtqueues; on the host, the runtime's own hybrid-vsock client — its source file
//! compiled here unchanged — connects with `CONNECT 1024`, and data goes both ways.

mod common;

// The runtime's agent client, verbatim: proves the runtime needs no change for hull-vmm.
#[rustfmt::skip] // the file belongs to runtime/: never reformat it from here
#[path = "../../runtime/src/uds_path.rs"]
#[allow(dead_code)]
mod uds_path;
#[path = "../../runtime/src/agent_client/hybrid_vsock.rs"]
#[allow(dead_code)]
mod hybrid_vsock;

use std::sync::mpsc;
use std::time::Duration;

use common::{guests, kvm_available, scratch};
use hull_vmm::{ExitReason, VmConfig, Vmm, VsockConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(120);

/// Connects to guest port 1024 through the hybrid socket `uds` with the runtime's
/// client, sends `msg` and reads back as many bytes.
async fn echo(uds: &std::path::Path, msg: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = hybrid_vsock::connect(uds, 1024, LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(msg).await.map_err(|e| e.to_string())?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(LIMIT, s.read_exact(&mut back))
        .await
        .map_err(|_| "no echo".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(back)
}

#[test]
fn guest_vsock_echo_through_the_runtime_client() {
    if !kvm_available("guest_vsock_echo_through_the_runtime_client") {
        return;
    }
    let dir = scratch("vsock-e2e");
    let uds = dir.join("vm.sock");
    let mut cfg = VmConfig::new(&guests().elf64);
    cfg.cmdline = "act=v".into();
    cfg.mem_mib = 32;
    cfg.console = Some(dir.join("console.txt"));
    cfg.devices.debug_exit = true;
    cfg.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    let vmm = Vmm::build(cfg).expect("build");
    let handle = vmm.handle();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vmm.run());
    });
    let console = || std::fs::read_to_string(dir.join("console.txt")).unwrap_or_default();

    // Connect at once, while the guest may still be setting the device up: the muxer
    // holds the REQUEST until the guest posts RX buffers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let msg = b"ping from the host\n";
    let echoed = rt.block_on(echo(&uds, msg));
    let outcome = rx.recv_timeout(LIMIT);
    handle.stop();
    let outcome = match outcome {
        Ok(r) => r,
        Err(_) => panic!("the VM did not end; console: {}", console()),
    };
    if let Ok(ExitReason::EmulationFailure { .. }) = &outcome {
        println!(
            "SKIP guest_vsock_echo_through_the_runtime_client: this host's KVM cannot run \
             the guest ({outcome:?}); the device-model tests carry the proof. Console: {}",
            console()
        );
        return;
    }
    let echoed = echoed.unwrap_or_else(|e| panic!("client: {e}; console: {}", console()));
    assert_eq!(echoed, msg);
    assert_eq!(
        outcome.expect("run"),
        ExitReason::DebugExit(b'V'),
        "{}",
        console()
    );
    let text = console();
    for line in [
        "vsock: virtio-mmio v2, device 19",
        "vsock: connected",
        "vsock: echoed",
    ] {
        assert!(text.contains(line), "{line:?} missing: {text}");
    }
    assert!(
        text.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "device announced on the command line: {text}"
    );
    assert!(!uds.exists(), "the hybrid socket is removed with the VM");
}

/// A VM whose guest set its vsock device up is snapshotted while it waits for a host
/// connection; the restored VM gets a socket of its own, and the runtime's client
/// reaches the guest through it: the device's queues went on where they were.
#[test]
fn a_restored_guest_answers_on_its_own_vsock_socket() {
    if !kvm_available("a_restored_guest_answers_on_its_own_vsock_socket") {
        return;
    }
    let dir = scratch("vsock-restore");
    let config = |name: &str| {
        let mut cfg = VmConfig::new(&guests().elf64);
        cfg.cmdline = "act=v".into();
        cfg.mem_mib = 32;
        cfg.console = Some(dir.join(format!("{name}.txt")));
        cfg.devices.debug_exit = true;
        cfg.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join(format!("{name}.sock")),
        });
        cfg
    };
    let console =
        |name: &str| std::fs::read_to_string(dir.join(format!("{name}.txt"))).unwrap_or_default();

    let vmm = Vmm::build(config("template")).expect("build");
    let handle = vmm.handle();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vmm.run());
    });
    let start = std::time::Instant::now();
    while !console("template").contains("vsock: queues ready") {
        if let Ok(outcome) = rx.try_recv() {
            println!(
                "SKIP a_restored_guest_answers_on_its_own_vsock_socket: the guest ended \
                 before its device was ready ({outcome:?}); console: {}",
                console("template")
            );
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "guest never ready: {}",
            console("template")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let snap = dir.join("snap");
    handle.snapshot(&snap).expect("snapshot");
    handle.stop();
    assert_eq!(
        rx.recv_timeout(LIMIT)
            .expect("the template VM ends")
            .expect("run"),
        ExitReason::Stopped
    );
    assert!(!dir.join("template.sock").exists());

    let vmm = Vmm::restore(&snap, config("clone")).expect("restore");
    let handle = vmm.handle();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vmm.run());
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let msg = b"ping after the restore\n";
    let echoed = rt.block_on(echo(&dir.join("clone.sock"), msg));
    let outcome = rx.recv_timeout(LIMIT);
    handle.stop();
    let echoed = echoed.unwrap_or_else(|e| panic!("client: {e}; console: {}", console("clone")));
    assert_eq!(echoed, msg);
    assert_eq!(
        outcome.expect("the clone ends").expect("run"),
        ExitReason::DebugExit(b'V'),
        "{}",
        console("clone")
    );
    let text = console("clone");
    assert!(text.contains("vsock: connected"), "{text}");
    assert!(text.contains("vsock: echoed"), "{text}");
    assert!(
        !text.contains("vsock: queues ready"),
        "the clone set the device up again: {text}"
    );
}
