//! hull-vmm: hull's KVM microVM monitor.
//!
//! The runtime links this library (or runs the `hull-vmm` binary, which is a thin
//! shell around it). The whole public surface is:
//!
//! - [`VmConfig`]: what to boot (serde, the same JSON the binary reads),
//! - [`Vmm::build`] then [`Vmm::run`]: boot it and block until it ends with an [`ExitReason`],
//! - [`VmmHandle`]: stop, pause, resume or snapshot a running VM from another thread,
//! - [`Vmm::restore`]: a VM from a snapshot directory, ready to [`Vmm::run`],
//! - [`host_support`]: can this host run hull-vmm, and can it boot Linux?
//!
//! Where things live: `builder.rs` reads as the boot script; `vstate/` holds the only
//! code that issues KVM ioctls; `arch/x86_64/` computes boot state (layout, page tables,
//! registers, zero page / PVH start_info, CPUID, MSRs) without touching KVM;
//! `devices/` are device models behind the I/O `bus`; `event_loop.rs` serves host-side
//! events (serial input, stop/pause requests) while vCPU threads run the guest.
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

mod arch;
#[cfg(feature = "bench")]
pub mod bench;
mod builder;
mod bus;
mod config;
mod control;
mod devices;
mod error;
mod event_loop;
mod exit;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod host;
mod seccomp;
mod snapshot;
mod vcpus;
mod vmm;
mod vstate;

pub use config::{BlockConfig, FsConfig, KernelFormat, NetConfig, VmConfig, VsockConfig};
pub use error::{Error, Result};
pub use exit::{ExitReason, ResetCause};
pub use host::{host_support, inherited_file, HostSupport, KvmKind};
pub use vmm::{Vmm, VmmHandle};

/// The I/O port of the debug-exit device (QEMU's `isa-debug-exit` default port): a byte
/// `v` written there ends the VM with [`ExitReason::DebugExit`]`(v)`; the binary then
/// exits with status `(v << 1) | 1`, as QEMU does.
pub const DEBUG_EXIT_PORT: u16 = devices::legacy::DEBUG_EXIT_PORT;
