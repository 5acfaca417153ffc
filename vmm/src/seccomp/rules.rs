//! Syscalls each thread kind may make (x86_64). Anything else kills the process.

use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msrs, kvm_pit_state2, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use libc::*;

/// `_IOR(KVMIO, nr, T)`: a KVM ioctl that reads a `size`-byte structure.
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// `_IOWR(KVMIO, nr, T)`.
const fn kvm_iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// `ioctl` requests the vCPU threads make.
pub const VCPU_IOCTLS: &[u64] = &[
    0xae80,      // KVM_RUN
    0x8090_ae81, // KVM_GET_REGS (rip for an emulation-failure report; snapshots)
    // A snapshot reads a paused vCPU's state on its own thread:
    kvm_ior(0x83, size_of::<kvm_sregs>()),     // KVM_GET_SREGS
    kvm_iowr(0x91, size_of::<kvm_cpuid2>()),   // KVM_GET_CPUID2
    kvm_ior(0x98, size_of::<kvm_mp_state>()),  // KVM_GET_MP_STATE
    kvm_ior(0xa4, size_of::<kvm_xsave>()),     // KVM_GET_XSAVE
    kvm_ior(0xa6, size_of::<kvm_xcrs>()),      // KVM_GET_XCRS
    kvm_ior(0xa1, size_of::<kvm_debugregs>()), // KVM_GET_DEBUGREGS
    kvm_ior(0x8e, size_of::<kvm_lapic_state>()), // KVM_GET_LAPIC
    kvm_iowr(0x88, size_of::<kvm_msrs>()),     // KVM_GET_MSRS
    kvm_ior(0x9f, size_of::<kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
];
// (A guest's device reset runs on its vCPU thread: it may drop vsock streams and change
// the devices' own epoll sets, hence epoll_ctl and close below.)

/// `ioctl` requests the event loop makes.
pub const EVENT_LOOP_IOCTLS: &[u64] = &[
    0x5421,      // FIONBIO: set_nonblocking on accepted vsock streams
    0x4004_54d0, // TUNSETOFFLOAD: the guest's acked receive offloads
    // A snapshot reads the VM's state on the event loop:
    kvm_iowr(0x62, size_of::<kvm_irqchip>()), // KVM_GET_IRQCHIP
    kvm_ior(0x9f, size_of::<kvm_pit_state2>()), // KVM_GET_PIT2
    kvm_ior(0x7c, size_of::<kvm_clock_data>()), // KVM_GET_CLOCK
];

/// Memory, threads, signals and time: what any Rust thread needs.
macro_rules! housekeeping {
    () => {
        [
            SYS_brk,
            SYS_mmap,
            SYS_munmap,
            SYS_mremap,
            SYS_madvise,
            SYS_mprotect, // allocator
            SYS_futex,    // locks, join
            SYS_rt_sigreturn,
            SYS_rt_sigprocmask,
            SYS_sigaltstack, // kick signal, thread exit
            SYS_exit,
            SYS_exit_group,
            SYS_sched_yield,
            SYS_sched_getaffinity,
            SYS_clock_gettime,
            SYS_clock_nanosleep,
            SYS_nanosleep, // timed waits
            SYS_getpid,
            SYS_gettid,
            SYS_tgkill,    // kicks, diagnostics
            SYS_getrandom, // HashMap seeds
            SYS_write,
            SYS_writev, // logs, eventfds
            SYS_read,   // eventfds
            SYS_dup,
            SYS_close,
            SYS_fcntl, // fd checks (F_GETFD)
        ]
    };
}

/// vCPU threads: exits are served by device models in memory; they write the console
/// file and eventfds (interrupts, queue notifications, the control mailbox).
pub fn vcpu() -> Vec<i64> {
    let mut v = housekeeping!().to_vec();
    v.push(SYS_epoll_ctl);
    v
}

/// The event loop thread: devices' host I/O and the VM's teardown.
pub fn event_loop() -> Vec<i64> {
    let mut v = housekeeping!().to_vec();
    v.extend([
        SYS_epoll_wait,
        SYS_epoll_pwait,
        SYS_epoll_ctl, // the loop and the vsock muxer's epoll
        SYS_accept4,
        SYS_socket,
        SYS_connect,
        SYS_shutdown, // hybrid vsock
        SYS_recvfrom,
        SYS_sendto,
        SYS_recvmsg,
        SYS_sendmsg, // stream I/O
        SYS_readv,
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev, // virtio-blk
        SYS_fsync,
        SYS_fdatasync, // virtio-blk flush
        SYS_lseek,
        SYS_unlink, // removing the hybrid socket at the end
    ]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The computed numbers are the ones in Linux's <linux/kvm.h>.
    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(
            kvm_ior(0x81, size_of::<kvm_bindings::kvm_regs>()),
            0x8090_ae81
        );
        assert_eq!(kvm_ior(0x83, size_of::<kvm_sregs>()), 0x8138_ae83); // KVM_GET_SREGS
        assert_eq!(kvm_ior(0x8e, size_of::<kvm_lapic_state>()), 0x8400_ae8e); // KVM_GET_LAPIC
        assert_eq!(kvm_ior(0xa4, size_of::<kvm_xsave>()), 0x9000_aea4); // KVM_GET_XSAVE
        assert_eq!(kvm_iowr(0x62, size_of::<kvm_irqchip>()), 0xc208_ae62); // KVM_GET_IRQCHIP
        assert_eq!(kvm_iowr(0x88, size_of::<kvm_msrs>()), 0xc008_ae88); // KVM_GET_MSRS
        assert_eq!(kvm_ior(0x7c, size_of::<kvm_clock_data>()), 0x8030_ae7c); // KVM_GET_CLOCK
    }
}
