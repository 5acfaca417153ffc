//! Syscalls each thread kind may make (x86_64). Anything else kills the process.

use libc::*;

/// `ioctl` requests the vCPU threads make.
pub const VCPU_IOCTLS: &[u64] = &[
    0xae80,      // KVM_RUN
    0x8090_ae81, // KVM_GET_REGS (rip for an emulation-failure report)
];
// (A guest's device reset runs on its vCPU thread: it may drop vsock streams and change
// the devices' own epoll sets, hence epoll_ctl and close below.)

/// `ioctl` requests the event loop makes.
pub const EVENT_LOOP_IOCTLS: &[u64] = &[
    0x5421,      // FIONBIO: set_nonblocking on accepted vsock streams
    0x4004_54d0, // TUNSETOFFLOAD: the guest's acked receive offloads
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
