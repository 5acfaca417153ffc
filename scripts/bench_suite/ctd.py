"""A containerd of the suite's own (temp root, state, socket; hull's shim through PATH),
the process table helpers the memory figures need, and cleanup that leaves nothing."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

HULL = "io.containerd.hull.v2"
RUNC = "io.containerd.runc.v2"
IMAGE = "demo:latest"


def ppid_map():
    m = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: the fields after the last ')' are fixed.
        rest = stat[stat.rfind(")") + 2:].split()
        m[int(d)] = int(rest[1])
    return m


def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def pids_matching(*needles):
    return [p for p in ppid_map() if all(n in cmdline(p) for n in needles)]


def descendants(roots):
    pm = ppid_map()
    out, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(c for c, pp in pm.items() if pp == p)
    return out


def pss_kib(pid):
    """Proportional set size of one process (shared pages split among their users)."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid):
    """Resident set size of one process (shared pages counted in full)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_name(pid):
    c = cmdline(pid).split(" ")[0]
    return os.path.basename(c) or "?"


def mem_available_kib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


class Containerd:
    def __init__(self, bin_dir, work_parent="/tmp", hull_config=None):
        self.dir = tempfile.mkdtemp(prefix="hull-bench-suite-", dir=work_parent)
        self.sock = os.path.join(self.dir, "c.sock")
        self.hull_state = os.path.join(self.dir, "hull-state")
        # A namespace of our own: the runc shim keeps state in /run/containerd/runc/<ns>.
        self.ns = f"hull-bench-{os.getpid()}"
        self.proc = None
        # Teardowns that needed more than one SIGKILL or failed (remove()), and what
        # close() could not clean: printed by the suite and kept in its JSON.
        self.notes = []
        b = os.path.join(self.dir, "bin")
        os.makedirs(b)
        os.makedirs(self.hull_state)
        os.symlink(os.path.join(bin_dir, "containerd-shim-hull-v2"), os.path.join(b, "containerd-shim-hull-v2"))
        # gVisor has no containerd shim in Debian: the runc shim runs it through this.
        self.runsc_wrapper = os.path.join(b, "runsc-bench")
        with open(self.runsc_wrapper, "w") as f:
            f.write('#!/bin/sh\nexec runsc --network=none --ignore-cgroups "$@"\n')
        os.chmod(self.runsc_wrapper, 0o755)
        with open(os.path.join(self.dir, "config.toml"), "w") as f:
            f.write(f'version = 2\nroot = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{self.sock}"\n')
        self.log_path = os.path.join(self.dir, "containerd.log")
        env = dict(os.environ, PATH=f"{b}:{os.environ.get('PATH', '')}", HULL_STATE_DIR=self.hull_state,
                   HULL_LOG_SPANS="1")
        if hull_config:
            # hull's config for everything this containerd starts: its shims' `start`
            # reads [pool] there (runtime options reach a shim only at Create).
            self.hull_config = os.path.join(self.dir, "hull.toml")
            with open(self.hull_config, "w") as f:
                f.write(hull_config)
            env["HULL_CONFIG"] = self.hull_config
        self.proc = subprocess.Popen(["containerd", "--config", os.path.join(self.dir, "config.toml")],
                                     stdin=subprocess.DEVNULL, stdout=open(self.log_path, "wb"),
                                     stderr=subprocess.STDOUT, env=env)
        for _ in range(200):
            if self.ctr("version", check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"containerd did not start: {self.log_tail()}")

    def log_tail(self, n=3):
        try:
            return " | ".join(open(self.log_path, errors="replace").read().splitlines()[-n:])
        except OSError:
            return ""

    def log_size(self):
        return os.path.getsize(self.log_path)

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def ctr(self, *args, check=True, timeout=300):
        p = subprocess.run(["timeout", "-s", "KILL", str(timeout), "ctr", "-a", self.sock, "-n", self.ns, *args],
                           capture_output=True, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {err_text(p)}")
        return p

    def import_image(self, layout):
        tar = os.path.join(self.dir, "demo.tar")
        subprocess.run(["tar", "-cf", tar, "-C", layout, "."], check=True)
        self.ctr("images", "import", "--base-name", "demo", tar)
        os.remove(tar)

    def shim_pids(self, cid=None):
        needles = [f"-address {self.sock}"] + ([f"-id {cid} "] if cid else [])
        found = [p for p in pids_matching(*needles) if "containerd-shim" in cmdline(p)]
        # Pool VM keepers that became a task's shim (`[pool]`): they run in its bundle.
        bundles = os.path.join(self.dir, "state", "io.containerd.runtime.v2.task", self.ns)
        for p in pids_matching("pool-keep"):
            cwd = process_cwd(p)
            if os.path.dirname(cwd) == bundles and (cid is None or os.path.basename(cwd) == cid):
                found.append(p)
        return found

    def pod_pids(self, cid=None):
        """Everything the runtime started for pod `cid` (all pods if None): its shim and
        the shim's descendants (VM, helpers, container processes)."""
        return descendants(self.shim_pids(cid))

    def remove(self, cid, limit=60.0):
        """SIGKILL the task, delete it (retrying while it is still running, and sending
        SIGKILL again every second: a kill can be lost while a task is still starting
        or stopping), then the container. Anything unusual goes to self.notes."""
        t0 = time.perf_counter()
        self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        tries, kills, last_kill, why = 0, 1, t0, ""
        while True:
            d = self.ctr("task", "delete", cid, check=False)
            tries += 1
            if d.returncode == 0 or b"not found" in d.stderr:
                why = ""
                break
            why = err_text(d)
            now = time.perf_counter()
            if now - t0 > limit:
                break
            if now - last_kill >= 1.0:
                self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
                kills, last_kill = kills + 1, now
            time.sleep(0.1)
        dt = time.perf_counter() - t0
        if why:
            self.notes.append(f"{cid}: task delete still failing after {dt:.1f} s ({kills} SIGKILLs): {why}")
        elif kills > 1:
            self.notes.append(f"{cid}: the task ended only after {kills} SIGKILLs ({dt:.1f} s, "
                              f"{tries} task deletes)")
        self.ctr("containers", "rm", cid, check=False)

    def close(self):
        for c in self.ctr("containers", "ls", "-q", check=False).stdout.decode().split():
            self.remove(c)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in descendants(self.shim_pids()):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.3)
        mounts = [l.split()[1] for l in open("/proc/self/mounts") if l.split()[1].startswith(self.dir)]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        # The runc shim's state dir of our namespace (empty once its tasks are deleted).
        shutil.rmtree(f"/run/containerd/runc/{self.ns}", ignore_errors=True)
        self.notes.extend(remove_cgroups(self.ns))


def remove_cgroups(ns, root="/sys/fs/cgroup"):
    """Removes the cgroups named after our namespace: runc and youki put a container in
    `/<namespace>/<id>` (ctr's default cgroupsPath), hull's shim its VM likewise, and
    they remove the leaf but not the parent. Depth first, in every hierarchy (v1
    controllers and cgroup2 under `root`, or cgroup2 at `root` itself). Returns what could not be removed (a process still in it)."""
    left = []
    hierarchies = [root] + [os.path.join(root, h) for h in (sorted(os.listdir(root)) if os.path.isdir(root) else [])]
    for h in hierarchies:
        top = os.path.join(h, ns)
        if not os.path.isdir(top) or os.path.islink(h):
            continue
        for d, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(d)
            except OSError as e:
                left.append(f"cgroup {d} not removed: {e.strerror}")
    return left


def err_text(p):
    lines = p.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit {p.returncode}"
