//! Device models. Each is a state machine behind [`crate::bus::BusDevice`]; interrupts
//! and VM-ending requests leave through small handles passed in.

pub mod legacy;
pub mod virtio;
