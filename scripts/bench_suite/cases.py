"""The suite's cases, each run for one runtime through the suite's containerd. A case
returns figures (lists of seconds / sizes; summarised later) or raises: the caller
records why it could not run. Nothing here asserts on time."""
import datetime
import os
import re
import subprocess
import time

from ctd import IMAGE, mem_available_kib, pss_kib, proc_name, rss_kib

# A pod that does nothing: the memory and exec cases measure it idle.
IDLE = ["sleep", "100000"]


def pod_id(kind, rt, i):
    """A container ID that is no other's prefix: Debian's runsc (2022-12) looks IDs up by
    prefix and refuses `kill dens-runsc-1` as ambiguous while dens-runsc-10.. exist, so
    that task could never be stopped (the 60-72 s runsc teardown outlier)."""
    return f"{kind}-{rt}-{i:04d}"


def _ts(line):
    """The timestamp of a line the shim logged (tracing's fmt: RFC 3339, UTC)."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
    if not m:
        return None
    frac = m.group(1)
    head, _, digits = frac.partition(".")
    dt = datetime.datetime.fromisoformat(f"{head}.{digits[:6]:0<6}+00:00")
    return dt.timestamp()


def _span_dur(line):
    """busy + idle of a span-close line (`close time.busy=1.2ms time.idle=3s`)."""
    unit = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    total = 0.0
    for v, u in re.findall(r"time\.(?:busy|idle)=([\d.]+)(ns|µs|us|ms|s)", line):
        total += float(v) * unit[u]
    return total


def hull_phases(log, t0, total):
    """A hull pod start split into phases, from the shim's log: its first line (the shim
    is up), the sandbox's boot report, and the close of the container_create and
    container_start spans. Durations in seconds; None when a line is missing."""
    shim = [l for l in log.splitlines() if _ts(l) is not None]
    if not shim:
        return None
    first = _ts(shim[0])
    ready = next((l for l in shim if "sandbox ready" in l), None)
    # The close of that span itself, not of one nested in it (`outer{..}:inner{..}: target: close`).
    closed = lambda span: next((l for l in shim if re.search(span + r"\{[^}]*\}: \S+: close time", l)), None)
    created, started = closed("container_create"), closed("container_start")
    if not (ready and created and started):
        return None
    rep = dict(re.findall(r"(processes|kernel|init|agent ready|connected) ([\d.]+) s", ready))
    launch_t = _ts(ready) - float(rep["connected"])
    marks = [("shim started", first), ("shim setup", launch_t)]
    prev = launch_t
    for key, name in (("processes", "VM processes"), ("kernel", "kernel banner"), ("init", "kernel boot -> /init"),
                      ("agent ready", "agent ready"), ("connected", "agent connected")):
        if key in rep:
            prev = launch_t + float(rep[key])
            marks.append((name, prev))
    marks.append(("container created", _ts(created)))
    out, last = {}, t0
    for name, t in marks:
        out[name] = max(0.0, t - last)
        last = t
    out["process started"] = _span_dur(started)
    out["exit + teardown + ctr"] = max(0.0, t0 + total - last - out["process started"])
    return out


def start(c, rt, runtime_args, runs, before_each=None, first=0):
    """`ctr run --rm IMAGE true` and time to first output of `echo`; hull's phases.
    `before_each` runs before each `ctr run` (untimed); ids count from `first`."""
    true_s, echo_s, first_s, phases = [], [], [], []
    for i in range(first, first + runs):
        cid = pod_id("start", rt, i)
        if before_each:
            before_each()
        off = c.log_size()
        t0 = time.time()
        p = c.ctr("run", "--rm", *runtime_args, IMAGE, cid, "true", check=False)
        total = time.time() - t0
        if p.returncode != 0:
            c.remove(cid)
            lines = p.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"ctr run exited {p.returncode}")
        true_s.append(total)
        if rt == "hull":
            time.sleep(0.5)  # the shim's last lines reach containerd's log through a FIFO
            ph = hull_phases(c.log_since(off), t0, total)
            if ph:
                phases.append(ph)
        cid = pod_id("echo", rt, i)
        if before_each:
            before_each()
        t0 = time.perf_counter()
        pr = subprocess.Popen(["timeout", "-s", "KILL", "300", "ctr", "-a", c.sock, "-n", c.ns, "run", "--rm",
                               *runtime_args, IMAGE, cid, "echo", "hi"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = pr.stdout.read(1)
        first = time.perf_counter() - t0
        pr.communicate()
        if pr.returncode != 0 or not got:
            c.remove(cid)
            raise RuntimeError(f"ctr run echo exited {pr.returncode}")
        first_s.append(first)
        echo_s.append(time.perf_counter() - t0)
    r = {"ctr_run_true_s": true_s, "echo_first_output_s": first_s, "ctr_run_echo_s": echo_s}
    if rt == "hull":
        r["phases_s"] = {k: [p[k] for p in phases if k in p] for k in (phases[0] if phases else {})}
    return r


def _exec(c, cid, eid, *cmd):
    t0 = time.perf_counter()
    p = c.ctr("task", "exec", "--exec-id", eid, cid, *cmd, check=False)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"exec {' '.join(cmd)}: {p.stderr.decode(errors='replace').strip()[-200:]}")
    return dt, p.stdout.decode(errors="replace")


def pod_memory(c, cid):
    """Host PSS of everything started for the pod, by process name, in MiB."""
    by = {}
    for p in c.pod_pids(cid):
        n = proc_name(p)
        by[n] = by.get(n, 0) + pss_kib(p) / 1024
    return {k: round(v, 1) for k, v in sorted(by.items())}


def pod(c, rt, runtime_args, runs, io_mib, io_files, settle):
    """One idle pod: host PSS (+ guest memory in use for hull), exec latency, I/O in the
    container's rootfs, then its teardown."""
    cid = f"pod-{rt}"
    c.ctr("run", "-d", *runtime_args, IMAGE, cid, *IDLE)
    try:
        time.sleep(settle)
        r = {"memory_mib": pod_memory(c, cid)}
        r["host_pss_mib"] = round(sum(r["memory_mib"].values()), 1)
        # The shim's RSS too (its binary's pages in full, though pods share them).
        r["shim_rss_mib"] = round(sum(rss_kib(p) for p in c.shim_pids(cid)) / 1024, 1)
        if rt == "hull":
            _, meminfo = _exec(c, cid, "meminfo", "cat", "/proc/meminfo")
            kv = {l.split(":")[0]: int(l.split()[1]) for l in meminfo.splitlines() if l.count(":") == 1}
            r["guest_in_use_mib"] = round((kv["MemTotal"] - kv["MemAvailable"]) / 1024, 1)
            r["guest_total_mib"] = round(kv["MemTotal"] / 1024, 1)
        r["exec_true_s"] = [_exec(c, cid, f"e{i}", "true")[0] for i in range(runs)]
        r.update(_io(c, cid, runs, io_mib, io_files))
    finally:
        t0 = time.perf_counter()
        c.remove(cid)
        td = time.perf_counter() - t0
    r["teardown_s"] = [td]
    return r


def _io(c, cid, runs, io_mib, io_files):
    """I/O in the container's rootfs: `io_mib` MiB written with fsync and read back,
    `io_files` empty files created in a new dir; `runs` times each."""
    w, rd, small = [], [], []
    for i in range(runs):
        f = f"/bench-io-{i}"
        w.append(_exec(c, cid, f"w{i}", "dd", "if=/dev/zero", f"of={f}", "bs=1M", f"count={io_mib}",
                       "conv=fsync")[0])
        rd.append(_exec(c, cid, f"r{i}", "dd", f"if={f}", "of=/dev/null", "bs=1M")[0])
        _exec(c, cid, f"rm{i}", "rm", "-f", f)
        small.append(_exec(c, cid, f"s{i}", "sh", "-c",
                           f"mkdir /bench-files-{i} && cd /bench-files-{i} && seq {io_files} | xargs touch")[0])
    return {"io_write_s": w, "io_read_s": rd, "io_small_files_s": small,
            "io_mib": io_mib, "io_files": io_files}


def io_pod(c, rt, runtime_args, runs, io_mib, io_files):
    """The I/O cases alone, in a pod of their own."""
    cid = f"io-{rt}"
    c.ctr("run", "-d", *runtime_args, IMAGE, cid, *IDLE)
    try:
        return _io(c, cid, runs, io_mib, io_files)
    finally:
        c.remove(cid)


def density(c, rt, runtime_args, pods, settle):
    """`pods` idle pods started one after another; each start's time, the host memory
    they use together (their PSS, and MemAvailable's drop), then each one's teardown."""
    ids = [pod_id("dens", rt, i) for i in range(pods)]
    starts, teardowns = [], []
    avail0 = mem_available_kib()
    try:
        for cid in ids:
            t0 = time.perf_counter()
            c.ctr("run", "-d", *runtime_args, IMAGE, cid, *IDLE)
            starts.append(time.perf_counter() - t0)
        time.sleep(settle)
        pss = sum(pss_kib(p) for p in c.pod_pids()) / 1024
        drop = (avail0 - mem_available_kib()) / 1024
    finally:
        for cid in ids:
            t0 = time.perf_counter()
            c.remove(cid)
            teardowns.append(time.perf_counter() - t0)
    return {"start_s": starts, "teardown_s": teardowns, "pods": pods, "host_pss_mib": round(pss, 1),
            "mem_available_drop_mib": round(drop, 1),
            "last_over_first": round(starts[-1] / starts[0], 2) if starts and starts[0] > 0 else None}


def floor(hull_bin, runs, out_json, state_dir):
    """`hull bench boot`: the same kernel booting a trivial /init (the floor) next to a
    hull VM booting to its agent."""
    env = dict(os.environ, HULL_STATE_DIR=state_dir)
    p = subprocess.run([hull_bin, "bench", "boot", "--runs", str(runs), "--json", out_json],
                       capture_output=True, env=env, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"hull bench boot: {p.stderr.decode(errors='replace').strip()[-300:]}")
    import json
    b = json.load(open(out_json))
    ph = lambda side, name: next((x["stats"] for x in b[side] if x["name"] == name), None)
    return {"backend": b["backend"], "floor_init_s": ph("floor", "trivial /init reached"),
            "floor_total_s": ph("floor", "total (launch -> VM exited)"),
            "hull_vm_connected_s": ph("hull", "agent connected"),
            "hull_vm_total_s": ph("hull", "total (launch -> VM exited)"),
            "ratio_ready": b.get("ratio_ready"), "ratio_exit": b.get("ratio_exit")}


def agent_size(initramfs):
    """Size of the guest's /init (the agent) as shipped in the initramfs (newc cpio, raw
    or gzip'd)."""
    import gzip
    with open(initramfs, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    off = 0
    while off + 110 <= len(data) and data[off:off + 6] in (b"070701", b"070702"):
        h = data[off:off + 110]
        size, namesize = int(h[54:62], 16), int(h[94:102], 16)
        name = data[off + 110:off + 110 + namesize - 1].decode(errors="replace")
        if name == "TRAILER!!!":
            break
        if name.lstrip("./") == "init":
            return {"path": initramfs, "bytes": size, "mib": round(size / 2**20, 2),
                    "initramfs_bytes": os.path.getsize(initramfs)}
        off = (off + 110 + namesize + 3) & ~3
        off = (off + size + 3) & ~3
    raise RuntimeError(f"no /init in {initramfs}")
