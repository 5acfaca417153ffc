//! hull-vmm
