"""scripts/soak: hull's fault and leak suite, through a containerd of its own.

  python3 scripts/soak_suite/main.py --bin-dir DIR --image-layout DIR --out FILE
        [--cycles N] [--every N] [--time-limit S] [--no-faults] [--pool N] [--work-parent DIR]

1. Leaks: N create/start/delete cycles of a hull pod (`ctr run --rm ... true`), each
   also running an exec in a long-lived hull pod; after every --every cycles it counts
   host processes, containerd's and that pod's shim fds, mounts, cgroups, sockets, state
   and temp dirs, taps and network namespaces, and compares them with the counts taken
   before the first cycle.
2. Faults: a kill -9 of each component of a hull pod (shim, QEMU, virtiofsd, the vsock
   backend; the guest agent through `hull debug crash-agent`) at each lifecycle step
   (boot, running, exec, teardown): containerd must see the right exit and nothing of
   the pod may remain.
With --pool N the cycles' pods come from a warm pool of N VMs (`[pool] size = N` in
the HULL_CONFIG of the soak's containerd): before the first count and each later one
the pool is refilled and idle (`hull pool fill --wait`), so its VMs, keepers and
cgroups are in every count alike and any that leaks shows. The fault cases then run
with the pool off and drained: they time their kills to a cold pod's boot.
Prints the counts and a verdict, writes FILE (JSON); exits non-zero on any leak, any
failed cycle or fault, or when the time limit cut the run short."""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench_suite"))
import counts  # noqa: E402
import faults  # noqa: E402
from ctd import HULL, Containerd  # noqa: E402

KEEPER = "soak-keeper"


def fmt(d):
    return " ".join(f"{k}={v}" for k, v in d.items())


def pool_cmd(c, a, *args):
    env = dict(os.environ, HULL_STATE_DIR=c.hull_state, HULL_CONFIG=c.hull_config)
    p = subprocess.run([os.path.join(a.bin_dir, "hull"), "pool", *args], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise RuntimeError(f"hull pool {' '.join(args)}: {p.stdout.decode(errors='replace')[-400:]}")


def settle(c, a):
    """With a pool: refilled and idle, the same state for every count."""
    if a.pool:
        pool_cmd(c, a, "fill", "--wait", "300")


def leak_cycles(c, a, res, deadline):
    a.ids += [KEEPER, "soak-warm"]
    c.ctr("run", "-d", "--runtime", HULL, "demo:latest", KEEPER, "sleep", "100000")
    shims = c.shim_pids(KEEPER)
    if len(shims) != 1:
        raise RuntimeError(f"the long-lived pod has {len(shims)} shims")
    # Warm up once (first exec and first pod allocate what they keep), then take the base.
    c.ctr("run", "--rm", "--runtime", HULL, "demo:latest", "soak-warm", "true")
    c.ctr("task", "exec", "--exec-id", "warm", KEEPER, "true")
    settle(c, a)
    time.sleep(1)
    base = counts.snapshot(c, a.tmpdir, a.ids, shims[0])
    res["base"] = base
    print(f"soak: before: {fmt(base)}", flush=True)
    failures = []
    for i in range(1, a.cycles + 1):
        if time.monotonic() > deadline:
            res["cut_short_at"] = i - 1
            print(f"soak: time limit reached after {i - 1} cycles", flush=True)
            break
        cid = f"soak-{i}"
        a.ids.append(cid)
        p = c.ctr("run", "--rm", "--runtime", HULL, "demo:latest", cid, "true", check=False)
        if p.returncode != 0:
            failures.append({"cycle": i, "what": "ctr run", "error": p.stderr.decode(errors="replace")[-300:]})
            c.remove(cid)
        e = c.ctr("task", "exec", "--exec-id", f"x{i}", KEEPER, "true", check=False)
        if e.returncode != 0:
            failures.append({"cycle": i, "what": "exec", "error": e.stderr.decode(errors="replace")[-300:]})
        if i % a.every == 0 or i == a.cycles:
            settle(c, a)
            time.sleep(1)  # let the last pod's processes be reaped
            now = counts.snapshot(c, a.tmpdir, a.ids, shims[0])
            lk = counts.leaked(base, now)
            res["checkpoints"].append({"cycle": i, "counts": now, "leaked": lk, "failures": len(failures),
                                       "elapsed_s": round(time.monotonic() - res["_t0"], 1)})
            print(f"soak: after {i} cycles: {fmt(now)} | leaked: {fmt(lk) or 'none'} | failed cycles: "
                  f"{len(failures)}", flush=True)
    res["cycle_failures"] = failures
    c.remove(KEEPER)


def fault_cases(c, a, res):
    debug_cfg = os.path.join(c.dir, "debug.toml")
    with open(debug_cfg, "w") as f:
        f.write("[debug]\nexec = true\n")
    hull_bin = os.path.join(a.bin_dir, "hull")
    base = counts.snapshot(c, a.tmpdir, a.ids)
    for comp in faults.COMPONENTS:
        for step in faults.STEPS:
            if comp == "agent" and step == "boot":
                res["faults"].append({"component": comp, "step": step, "skipped":
                                      "the agent is reachable only once it has announced itself, the end of boot"})
                continue
            cid = f"fault-{comp}-{step}"
            a.ids.append(cid)
            r = faults.inject(c, hull_bin, debug_cfg, comp, step, cid)
            time.sleep(1)
            now = counts.snapshot(c, a.tmpdir, a.ids)
            r["leaked"] = counts.leaked(base, now)
            r["ok"] = faults.right_exit(r) and not r["leaked"]
            res["faults"].append(r)
            what = {k: v for k, v in r.items() if k not in ("component", "step", "ok")}
            print(f"soak: fault {comp:13} at {step:8} -> {'survived' if r['ok'] else 'FAILED'} {what}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--image-layout", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cycles", type=int, default=500)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--time-limit", type=int, default=5400, help="seconds for the whole run")
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--pool", type=int, default=0, help="pods from a warm pool of this many VMs")
    ap.add_argument("--work-parent", default="/tmp")
    a = ap.parse_args()
    if a.cycles < 0 or a.every < 1:
        raise SystemExit("--cycles must be >= 0 and --every >= 1")
    a.ids = []
    t0 = time.monotonic()
    deadline = t0 + a.time_limit
    res = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cycles": a.cycles, "checkpoints": [], "faults": [], "_t0": t0}
    # A TMPDIR of the soak's own for containerd and all it starts: what is left in it
    # is theirs.
    a.tmpdir = tempfile.mkdtemp(prefix="hull-soak-tmp-", dir=a.work_parent)
    os.environ["TMPDIR"] = a.tmpdir
    res["pool"] = a.pool
    c = Containerd(a.bin_dir, a.work_parent,
                   hull_config=f"[pool]\nsize = {a.pool}\n" if a.pool else None)
    c.ns = f"hull-soak-{os.getpid()}"
    try:
        c.import_image(a.image_layout)
        if a.cycles:
            leak_cycles(c, a, res, deadline)
        if a.pool:
            with open(c.hull_config, "w") as f:
                f.write("[pool]\nsize = 0\n")
            pool_cmd(c, a, "drain")
            a.pool = 0
        if not a.no_faults:
            fault_cases(c, a, res)
    finally:
        if res["pool"]:
            try:
                pool_cmd(c, a, "drain")
            except RuntimeError as e:
                print(f"soak: {e}", flush=True)
        c.close()
        shutil.rmtree(a.tmpdir, ignore_errors=True)
        # The namespace's parent cgroups (ctr puts pods under /<namespace>/<id>).
        for root, dirs, _ in os.walk("/sys/fs/cgroup"):
            for d in dirs:
                if d == c.ns:
                    try:
                        os.rmdir(os.path.join(root, d))
                    except OSError:
                        pass
            if root.count("/") > 3:
                dirs.clear()
    res.pop("_t0")
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    last = res["checkpoints"][-1] if res["checkpoints"] else None
    leaks = last["leaked"] if last else {}
    bad_faults = [f for f in res["faults"] if not f.get("ok") and "skipped" not in f]
    ran = last["cycle"] if last else 0
    verdict = not leaks and not res.get("cycle_failures") and not bad_faults and "cut_short_at" not in res
    res["verdict"] = "pass" if verdict else "fail"
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    survived = sum(1 for f in res["faults"] if f.get("ok"))
    print(f"soak: {ran} cycles, leaked after the last: {fmt(leaks) or 'nothing'}; failed cycles: "
          f"{len(res.get('cycle_failures', []))}; faults survived {survived}/"
          f"{sum(1 for f in res['faults'] if 'skipped' not in f)}; {res['elapsed_s']} s -> {res['verdict']}")
    print(f"written: {a.out}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
