//! What a jailed process does to itself between fork and exec. Everything is computed
//! by the parent ([`Plan`]); the child only makes system calls (no allocation, no locks:
//! only async-signal-safe work is allowed after `fork` in a threaded program).
//!
//! Order: a private mount namespace; the jail root bind-mounted onto itself; each
//! read-only file or dir and the socket dir bind-mounted at its own path inside it; a
//! tiny tmpfs `/dev` with only the device nodes the process needs (owned by the
//! sandbox uid when it needs them); `/proc` with `hidepid=invisible,subset=pid` (its
//! own processes only, no `/proc/sys`); `pivot_root` into the jail and the old root
//! detached; the root remounted read-only; rlimits; the capability bounding set
//! emptied; the sandbox gid/uid (which clears the effective and permitted sets; the
//! inheritable set is cleared explicitly); `no_new_privs`.

use std::ffi::CString;
use std::io;

/// One bind mount: `src` onto `dst` (an absolute host path inside the jail root).
#[derive(Debug)]
pub struct BindPlan {
    pub src: CString,
    pub dst: CString,
    pub writable: bool,
}

/// A device node created in the jail's `/dev`.
#[derive(Debug)]
pub struct DevicePlan {
    pub path: CString,
    pub mode: libc::mode_t,
    pub dev: libc::dev_t,
    /// chown to the sandbox uid/gid (a node only the sandbox may open, e.g. /dev/kvm).
    pub owned: bool,
}

/// What the child does. `root` is `None` for a process that is not moved into a jail
/// root nor given the sandbox uid (virtiofsd: it builds its own sandbox and needs
/// root; it still gets no_new_privs and the rlimits).
#[derive(Debug)]
pub struct Plan {
    pub root: Option<RootPlan>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
}

#[derive(Debug)]
pub struct RootPlan {
    pub root: CString,
    pub binds: Vec<BindPlan>,
    pub dev_dir: CString,
    pub dev_opts: CString,
    pub devices: Vec<DevicePlan>,
    pub proc_dir: CString,
    pub proc_opts: CString,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// The working directory inside the jail: the socket dir, so that socket names
    /// are short relative paths (see `uds_path`).
    pub cwd: CString,
}

const TMPFS: &[u8] = b"tmpfs\0";
const PROC: &[u8] = b"proc\0";
const SLASH: &[u8] = b"/\0";
const DOT: &[u8] = b".\0";

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ptr(b: &[u8]) -> *const libc::c_char {
    b.as_ptr().cast()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

impl Plan {
    /// Runs in the child after fork, before exec.
    ///
    /// # Safety
    /// Call only in a freshly forked child (it changes the calling process's mounts,
    /// credentials and limits); it does not allocate.
    pub unsafe fn apply(&self) -> io::Result<()> {
        if let Some(root) = &self.root {
            // SAFETY: forwarded from the caller's contract.
            unsafe { root.enter()? };
        }
        for (resource, value) in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: *value,
                rlim_max: *value,
            };
            // SAFETY: setrlimit reads the struct on our stack.
            check(unsafe { libc::setrlimit(*resource, &lim) })?;
        }
        if let Some(root) = &self.root {
            // SAFETY: forwarded from the caller's contract.
            unsafe { root.drop_privileges()? };
        }
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        Ok(())
    }
}

impl RootPlan {
    /// # Safety
    /// See [`Plan::apply`].
    unsafe fn enter(&self) -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: (whole block) each call passes NUL-terminated strings owned by `self`
        // or static byte strings, and null pointers where the kernel allows them.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing done from here on propagates back to the host.
            check(libc::mount(
                null,
                ptr(SLASH),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            // pivot_root needs the new root to be a mount point.
            check(libc::mount(
                self.root.as_ptr(),
                self.root.as_ptr(),
                null,
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            for b in &self.binds {
                check(libc::mount(
                    b.src.as_ptr(),
                    b.dst.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
                if b.writable {
                    flags |= libc::MS_NOEXEC;
                } else {
                    flags |= libc::MS_RDONLY;
                }
                check(libc::mount(
                    null,
                    b.dst.as_ptr(),
                    null,
                    flags,
                    std::ptr::null(),
                ))?;
            }
            check(libc::mount(
                ptr(TMPFS),
                self.dev_dir.as_ptr(),
                ptr(TMPFS),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                self.dev_opts.as_ptr().cast(),
            ))?;
            for d in &self.devices {
                check(libc::mknod(d.path.as_ptr(), libc::S_IFCHR | d.mode, d.dev))?;
                // mknod applies the umask: set the mode exactly.
                check(libc::chmod(d.path.as_ptr(), d.mode))?;
                if d.owned {
                    check(libc::chown(d.path.as_ptr(), self.uid, self.gid))?;
                }
            }
            check(libc::mount(
                ptr(PROC),
                self.proc_dir.as_ptr(),
                ptr(PROC),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                self.proc_opts.as_ptr().cast(),
            ))?;
            check(libc::chdir(self.root.as_ptr()))?;
            // pivot_root(".", "."): the old root ends up on top of the new one and is
            // detached right away; nothing of the host stays reachable.
            if libc::syscall(libc::SYS_pivot_root, ptr(DOT), ptr(DOT)) == -1 {
                return Err(io::Error::last_os_error());
            }
            check(libc::umount2(ptr(DOT), libc::MNT_DETACH))?;
            check(libc::chdir(ptr(SLASH)))?;
            check(libc::mount(
                null,
                ptr(SLASH),
                null,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null(),
            ))?;
            check(libc::chdir(self.cwd.as_ptr()))?;
        }
        Ok(())
    }

    /// # Safety
    /// See [`Plan::apply`].
    unsafe fn drop_privileges(&self) -> io::Result<()> {
        // SAFETY: (whole block) prctl/set*id/setgroups/fstat/fchown with integer
        // arguments or pointers to values on our stack.
        unsafe {
            // A stdout pipe (hull-vmm reopens it as /proc/self/fd/1 for the console)
            // must be the sandbox uid's to be reopened after the uid change.
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(1, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO {
                check(libc::fchown(1, self.uid, self.gid))?;
            }
            // Empty the bounding set (cap numbers past the kernel's last give EINVAL).
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == -1 {
                    break;
                }
            }
            let gid = self.gid;
            check(libc::setgroups(1, &gid))?;
            check(libc::setresgid(gid, gid, gid))?;
            // From uid 0 to a non-zero uid everywhere: the kernel clears the effective,
            // permitted and ambient capability sets.
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            let mut header = CapHeader {
                version: CAP_VERSION_3,
                pid: 0,
            };
            let data = [CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
