//! The transport: registers, honest feature negotiation, queue validation, reset.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;

use super::block::test_disk;
use super::driver::Driver;
use crate::bus::BusDevice;
use crate::devices::virtio::VIRTIO_F_VERSION_1;

fn driver() -> Driver {
    let (block, _file) = test_disk(8, false);
    Driver::new(Arc::new(Mutex::new(block)))
}

#[test]
fn identity_registers() {
    let mut d = driver();
    assert_eq!(d.reg(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.reg(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(d.reg(VIRTIO_MMIO_DEVICE_ID), 2);
    d.set(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(d.reg(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    d.set(VIRTIO_MMIO_QUEUE_SEL, 7);
    assert_eq!(
        d.reg(VIRTIO_MMIO_QUEUE_NUM_MAX),
        0,
        "queue that does not exist"
    );
    // Config space: capacity 8 sectors, byte-wise too.
    let mut cap = [0u8; 8];
    d.transport.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let mut b = [0u8; 1];
    d.transport.read(0x100, &mut b);
    assert_eq!(b[0], 8);
    let mut far = [0xaau8; 4];
    d.transport.read(0xffc, &mut far);
    assert_eq!(far, [0; 4]);
}

#[test]
fn bad_access_sizes_and_offsets_are_ignored() {
    let mut d = driver();
    let mut two = [0xffu8; 2];
    d.transport.read(0, &mut two);
    assert_eq!(two, [0, 0]);
    let mut odd = [0xffu8; 4];
    d.transport.read(2, &mut odd);
    assert_eq!(odd, [0; 4]);
    d.transport.write(VIRTIO_MMIO_STATUS.into(), &[1]);
    d.transport
        .write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
    d.transport.write(u64::MAX, &[1, 0, 0, 0]);
    assert_eq!(d.reg(VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn features_never_offered_are_refused() {
    let mut d = driver();
    let offered = d.device_features();
    assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
    // A bit the device does not offer (VIRTIO_F_RING_EVENT_IDX, 29).
    assert!(!d.negotiate(VIRTIO_F_VERSION_1 | 1 << 29));
    // Legacy drivers (no VERSION_1) are refused too.
    assert!(!d.negotiate(0));
    // A bit beyond 63.
    d.set(VIRTIO_MMIO_STATUS, 0);
    d.set(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    d.set(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    d.set(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    d.set(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
    d.set(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    d.set(VIRTIO_MMIO_STATUS, 0xb);
    assert_eq!(d.reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    // Without FEATURES_OK, DRIVER_OK does not activate and queues cannot be set up.
    d.setup_queue(0, 16);
    d.driver_ok();
    assert!(!d.transport.is_active());
    d.set(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(d.reg(VIRTIO_MMIO_QUEUE_READY), 0);
    // Honest negotiation works, and features cannot change after FEATURES_OK.
    assert!(d.negotiate(offered));
    d.set(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    d.set(VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
    d.setup_queue(0, 16);
    d.driver_ok();
    assert!(d.transport.is_active());
}

#[test]
fn unusable_queues_are_not_activated() {
    // Size not a power of two / above the maximum: ignored, the queue keeps size 256,
    // whose rings at the end of memory do not fit -> DEVICE_NEEDS_RESET.
    let mut d = driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.set(VIRTIO_MMIO_QUEUE_SEL, 0);
    d.set(VIRTIO_MMIO_QUEUE_NUM, 1024);
    d.set(VIRTIO_MMIO_QUEUE_NUM, 3);
    d.set(VIRTIO_MMIO_QUEUE_NUM, 0x1_0000);
    let end = super::driver::MEM_SIZE - 16;
    d.set(VIRTIO_MMIO_QUEUE_DESC_LOW, end as u32);
    d.set(VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
    d.set(VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
    d.set(VIRTIO_MMIO_QUEUE_READY, 1);
    d.driver_ok();
    assert!(!d.transport.is_active());
    assert_ne!(d.reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert!(d.take_irq(), "config interrupt for NEEDS_RESET");

    // Rings above guest memory (high address bits).
    let mut d = driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.setup_queue(0, 16);
    d.set(VIRTIO_MMIO_QUEUE_READY, 0);
    d.set(VIRTIO_MMIO_QUEUE_USED_HIGH, 0xffff_ffff);
    d.set(VIRTIO_MMIO_QUEUE_READY, 1);
    d.driver_ok();
    assert!(!d.transport.is_active());

    // Queue never made ready.
    let mut d = driver();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.driver_ok();
    assert!(!d.transport.is_active());
}

#[test]
fn reset_and_queue_registers_after_driver_ok() {
    let mut d = driver();
    d.start(0, 1);
    // Queue registers are frozen once DRIVER_OK is set.
    d.set(VIRTIO_MMIO_QUEUE_SEL, 0);
    d.set(VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(d.reg(VIRTIO_MMIO_QUEUE_READY), 1);
    // Clearing status bits other than by writing 0 is ignored.
    d.set(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert!(d.transport.is_active());
    // Notifying a queue that does not exist is harmless.
    d.notify(5);
    d.notify(u32::MAX);
    d.set(VIRTIO_MMIO_STATUS, 0);
    assert!(!d.transport.is_active());
    assert_eq!(d.reg(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(d.reg(VIRTIO_MMIO_QUEUE_READY), 0);
    // FAILED sticks until reset.
    d.set(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FAILED,
    );
    assert_ne!(d.reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FAILED, 0);
    // And the device comes up again after a reset.
    d.rings.clear();
    d.start(0, 1);
}
