"""What a pod may leave behind on the host, counted: the soak compares these counts with
the ones taken before its first cycle. Everything is scoped to the soak's own containerd
(its dirs, its socket, its namespace) so other work on the host does not blur them."""
import hashlib
import os
import stat

from ctd import cmdline, descendants, ppid_map, process_cwd


def _walk_count(root, pred):
    n = 0
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if pred(st):
                n += 1
    return n


def _fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def processes(c):
    """The shims of the soak's containerd, their descendants (VMs, vhost-user backends,
    container processes), and any process naming the soak's dirs (an orphaned VM)."""
    pids = descendants(c.shim_pids())
    pids |= {p for p in ppid_map() if c.dir in cmdline(p)}
    # Idle pool VM keepers (`--pool`) wait in the state dir's pool dir.
    pids |= descendants(p for p in ppid_map() if process_cwd(p).startswith(c.dir + "/"))
    return len(pids)


def mounts(c):
    n = 0
    for line in open("/proc/self/mountinfo"):
        if c.dir in line.split()[4]:
            n += 1
    return n


def cgroups(c):
    """Cgroup dirs of the soak's namespace in every hierarchy (v1 controllers and v2)."""
    n = 0
    base = "/sys/fs/cgroup"
    for ctrl in os.listdir(base):
        d = os.path.join(base, ctrl, c.ns)
        if os.path.isdir(d):
            n += 1 + _walk_count(d, lambda st: stat.S_ISDIR(st.st_mode))
    d = os.path.join(base, c.ns)  # a unified (v2-only) host
    if os.path.isdir(d):
        n += 1 + _walk_count(d, lambda st: stat.S_ISDIR(st.st_mode))
    # Pool VMs' own cgroups (`--pool`): one per idle VM, gone when a pod takes it.
    for d in [os.path.join(base, ctrl, "hull-pool") for ctrl in os.listdir(base)] + [os.path.join(base, "hull-pool")]:
        if os.path.isdir(d):
            n += _walk_count(d, lambda st: stat.S_ISDIR(st.st_mode))
    return n


def sockets(c):
    """Socket files under the soak's dirs (containerd's, hull's VM sockets)."""
    n = _walk_count(c.dir, lambda st: stat.S_ISSOCK(st.st_mode))
    return n


def shim_sockets(c, ids):
    """Shim sockets under /run/containerd/s of the pods the soak ran (a shim's socket is
    named by the sha256 of containerd's address, namespace and pod id, as the shim crate
    does): a pod's socket that outlives its shim is leaked."""
    n = 0
    for cid in ids:
        h = hashlib.sha256(f"{c.sock}/{c.ns}/{cid}".encode()).hexdigest()
        if os.path.exists(f"/run/containerd/s/{h}"):
            n += 1
    return n


def state_dirs(c):
    """Sandbox state dirs (hull's), task bundles (containerd's) and snapshots' mounts."""
    n = 0
    if os.path.isdir(c.hull_state):
        n += len(os.listdir(c.hull_state))
    bundles = os.path.join(c.dir, "state", "io.containerd.runtime.v2.task", c.ns)
    if os.path.isdir(bundles):
        n += len(os.listdir(bundles))
    return n


def temp_dirs(tmpdir):
    """Entries in the TMPDIR that containerd, the shims and everything they start got."""
    try:
        return len(os.listdir(tmpdir))
    except OSError:
        return 0


def taps():
    """Tap/tun devices in the host's network namespace, and named network namespaces."""
    n = 0
    for dev in os.listdir("/sys/class/net"):
        if os.path.exists(f"/sys/class/net/{dev}/tun_flags"):
            n += 1
    try:
        n += len(os.listdir("/var/run/netns"))
    except OSError:
        pass
    return n


def scratch_disks(scratch_dir="/var/lib/hull/scratch"):
    """Pods' scratch disks (`<sandbox id>.img`; the templates they are copied from are
    kept), loop devices and device-mapper devices."""
    n = 0
    try:
        n += sum(1 for f in os.listdir(scratch_dir) if f.endswith(".img") and not f.startswith("template-"))
    except OSError:
        pass
    for d in os.listdir("/sys/block"):
        if d.startswith("loop") and os.path.exists(f"/sys/block/{d}/loop/backing_file"):
            n += 1
        elif d.startswith("dm-"):
            n += 1
    return n


def snapshot(c, tmpdir, ids, keeper_shim=None):
    """Every count at once. `ids`: the pods the soak ran so far; `keeper_shim`: the pid of
    a long-lived pod's shim, whose fds must not grow with the execs run in it."""
    return {
        "processes": processes(c),
        "containerd_fds": _fds(c.proc.pid),
        "shim_fds": _fds(keeper_shim) if keeper_shim else 0,
        "mounts": mounts(c),
        "cgroups": cgroups(c),
        "sockets": sockets(c),
        "shim_sockets": shim_sockets(c, ids),
        "state_dirs": state_dirs(c),
        "temp_dirs": temp_dirs(tmpdir),
        "taps_netns": taps(),
        "scratch_disks_loop_dm": scratch_disks(),
    }


def leaked(base, now):
    """Counts that grew since `base`, as {name: growth}."""
    return {k: now[k] - base[k] for k in base if now[k] > base[k]}
