"""Fault injection: a kill -9 of one component of a hull pod at one lifecycle step, and
what containerd must see afterwards (the task stopped with a non-zero exit, or gone if
its shim died), with nothing of the pod left on the host."""
import os
import signal
import subprocess
import time

from ctd import HULL, cmdline, descendants

# component -> how to find its process among the pod's (shim and its descendants).
COMPONENTS = {
    "shim": lambda c, cid, pids: c.shim_pids(cid),
    "qemu": lambda c, cid, pids: [p for p in pids if "qemu-system" in cmdline(p)],
    "virtiofsd": lambda c, cid, pids: [p for p in pids if "virtiofsd" in cmdline(p).split(" ")[0]],
    "vsock-backend": lambda c, cid, pids: [p for p in pids if "vhost-device-vsock" in cmdline(p).split(" ")[0]],
    # The agent is the guest's PID 1: it is crashed through a debug request.
    "agent": None,
}

# boot: while `ctr run` waits for the VM; running: a running task; exec: while an exec
# runs in it; teardown: right after the task was sent SIGKILL.
STEPS = ["boot", "running", "exec", "teardown"]


def wait_until(what, timeout, fn, every=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def find(c, component, cid):
    pids = descendants(c.shim_pids(cid))
    return COMPONENTS[component](c, cid, pids)


def crash_agent(c, hull_bin, cid):
    env = dict(os.environ, HULL_STATE_DIR=c.hull_state)
    ps = subprocess.run([hull_bin, "ps"], capture_output=True, env=env, text=True)
    row = next((l for l in ps.stdout.splitlines() if f" {cid}" in l), None)
    if row is None:
        raise RuntimeError(f"hull ps does not list {cid}: {ps.stdout} {ps.stderr}")
    sandbox = row.split()[0]
    p = subprocess.run([hull_bin, "debug", "crash-agent", sandbox], capture_output=True, env=env, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"hull debug crash-agent {sandbox}: {p.stderr.strip()}")


def kill(c, hull_bin, component, cid):
    """Kills `component` of pod `cid`; False if it was not (or no longer) there."""
    if component == "agent":
        crash_agent(c, hull_bin, cid)
        return True
    pids = find(c, component, cid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return bool(pids)


def inject(c, hull_bin, debug_cfg, component, step, cid):
    """One fault. Returns a dict: what was killed, what containerd reported, or "error"."""
    run = ["run", "-d", "--runtime", HULL, "--runtime-config-path", debug_cfg, "demo:latest", cid, "sleep", "1000"]
    out = {"component": component, "step": step}
    bg = None
    try:
        if step == "boot":
            bg = subprocess.Popen(["ctr", "-a", c.sock, "-n", c.ns, *run], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            wait_until(f"{component} of {cid} to appear", 120, lambda: find(c, component, cid), every=0.01)
            out["killed"] = kill(c, hull_bin, component, cid)
            _, err = bg.communicate(timeout=180)
            out["ctr_run"] = "ok" if bg.returncode == 0 else err.decode(errors="replace").strip().splitlines()[-1:]
        else:
            c.ctr(*run)
            if step == "exec":
                bg = subprocess.Popen(["ctr", "-a", c.sock, "-n", c.ns, "task", "exec", "--exec-id", "fx", cid,
                                       "sleep", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL)
                wait_until("the exec to run", 60, lambda: exec_listed(c, cid), every=0.2)
            if step == "teardown":
                c.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
            out["killed"] = kill(c, hull_bin, component, cid)
            if bg is not None:
                bg.communicate(timeout=120)
                out["exec_exit"] = bg.returncode
        out["status"] = settle(c, cid)
        d = c.ctr("task", "delete", cid, check=False)
        out["delete"] = (d.stderr.decode(errors="replace").strip() or "ok") if d.returncode == 0 else \
            d.stderr.decode(errors="replace").strip()
    except Exception as e:  # reported as a failed fault; the caller still cleans up
        out["error"] = str(e)[-300:]
    finally:
        if bg is not None and bg.poll() is None:
            bg.kill()
            bg.wait()
        c.remove(cid)
    return out


def exec_listed(c, cid):
    # `ctr task ps` lists the guest's processes of the container: two once the exec runs.
    p = c.ctr("task", "ps", cid, check=False)
    return p.returncode == 0 and len(p.stdout.decode().strip().splitlines()) >= 3


def settle(c, cid):
    """Waits until containerd sees the task stopped (or forgot it, when its shim died)."""
    def status():
        p = c.ctr("task", "ls", check=False)
        for line in p.stdout.decode().splitlines()[1:]:
            w = line.split()
            if w and w[0] == cid:
                return w[2] if len(w) > 2 and w[2] == "STOPPED" else None
        return "GONE"
    return wait_until(f"task {cid} to stop", 60, status, every=0.2)


def right_exit(r):
    """Whether containerd saw what it should: a fault never leaves a task running or an
    exec hanging, a start the fault broke fails (and says so), and a task whose VM,
    backend or agent died exits non-zero (delete reports it); a task whose shim died is
    cleaned up and forgotten by containerd."""
    if "error" in r or r.get("exec_exit") == 0:
        return False
    if r["step"] == "boot" and r.get("ctr_run") != "ok":
        return r["status"] in ("GONE", "STOPPED")
    if r["status"] == "GONE":
        return r["component"] == "shim"
    return r["status"] == "STOPPED" and "non-zero exit" in r.get("delete", "")
