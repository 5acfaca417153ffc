//! The only code that talks to KVM (ioctls, the vCPU's `kvm_run` page) and maps guest
//! memory. Everything else hands these modules plain data.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;
