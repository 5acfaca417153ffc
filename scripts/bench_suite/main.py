"""scripts/bench suite: hull and its peers side by side through one containerd of its own.

  python3 scripts/bench_suite/main.py --bin-dir DIR --image-layout DIR --out DIR
        [--runs N] [--pods N] [--io-mib N] [--io-files N] [--tiny] [--runtimes a,b]
        [--work-parent DIR] [--io-only] [--start-only]

hull runs twice for I/O: with its writable layer on the pod's scratch disk in the guest
(`[rootfs] writable_layer = "guest-disk"`, the default) and in containerd's snapshot on
the host (`"host"`), each with a config of its own (`--runtime-config-path`).
--io-only runs just the I/O cases (runc, hull guest-disk, hull host) and ends with one
line: `creates medians: runc A s, guest-disk B s, host C s, guest-disk/runc R`.
--start-only runs just the start cases (`ctr run --rm true`, first output of `echo`) for
runc, cold hull and hull from its warm pool (`[pool] size = 1`, refilled and idle before
each pool run), cold and pool in alternating rounds, and ends with one line:
`start medians: runc A s, cold B s, pool C s, pool/cold R, pool/runc Q`.

Peers: runc; youki and crun through the runc shim's binary (--runc-binary); gVisor's
runsc through the runc shim with a wrapper (`runsc --network=none --ignore-cgroups`).
A runtime that cannot run here is reported with the reason, and the suite goes on.
Writes OUT/suite.json, OUT/suite.txt (the table) and OUT/suite.svg. Figures only: nothing
here is a pass/fail test, and the exit status is non-zero only when hull's own cases
or the suite itself failed."""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import report  # noqa: E402
from ctd import HULL, RUNC, Containerd  # noqa: E402


def hull_layer_config(work, layer):
    """A hull config whose containers write to `layer` (guest-disk or host)."""
    path = os.path.join(work, f"hull-{layer}.toml")
    with open(path, "w") as f:
        f.write(f'[rootfs]\nwritable_layer = "{layer}"\n')
    return path


def runtime_args(name, c):
    """ctr's runtime flags for a runtime, or the reason it cannot run here."""
    if name == "hull":
        return ["--runtime", HULL], None
    if name in ("hull-guest-disk", "hull-host"):
        cfg = hull_layer_config(c.dir, name.removeprefix("hull-"))
        return ["--runtime", HULL, "--runtime-config-path", cfg], None
    if name == "runc":
        return (["--runtime", RUNC], None) if shutil.which("runc") else (None, "runc not installed (apt-get install runc)")
    if name == "crun":
        return (["--runtime", RUNC, "--runc-binary", "crun"], None) if shutil.which("crun") else (
            None, "crun not installed (apt-get install crun)")
    if name == "youki":
        y = shutil.which("youki") or os.path.expanduser("~/.cargo/bin/youki")
        return (["--runtime", RUNC, "--runc-binary", y], None) if os.access(y, os.X_OK) else (
            None, "youki not installed (cargo install youki --features v1: this host's cgroups are v1)")
    if name == "runsc":
        return (["--runtime", RUNC, "--runc-binary", c.runsc_wrapper], None) if shutil.which("runsc") else (
            None, "runsc not installed (apt-get install runsc)")
    raise SystemExit(f"unknown runtime {name!r} (hull, runc, youki, crun, runsc)")


def attempt(fn, *a):
    try:
        return fn(*a)
    except Exception as e:  # a case that fails is reported, the suite goes on
        return {"error": str(e)[-400:]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True, help="where hull and containerd-shim-hull-v2 are")
    ap.add_argument("--image-layout", required=True, help="the demo image's OCI layout")
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--io-mib", type=int, default=256)
    ap.add_argument("--io-files", type=int, default=10000)
    ap.add_argument("--tiny", action="store_true", help="1 run, 2 pods, small I/O: proves the suite works")
    ap.add_argument("--runtimes", default="hull,runc,youki,crun,runsc")
    ap.add_argument("--work-parent", default="/tmp", help="where the suite's temp dirs go")
    ap.add_argument("--io-only", action="store_true", help="only the I/O cases: runc, hull guest-disk, hull host")
    ap.add_argument("--start-only", action="store_true", help="only the start cases: runc, cold hull, pool hull")
    a = ap.parse_args()
    if a.tiny:
        a.runs, a.pods, a.io_mib, a.io_files = 1, 2, 8, 200
    if a.runs < 1 or a.pods < 1:
        raise SystemExit("--runs and --pods must be at least 1")
    settle = 1.0 if a.tiny else 3.0
    os.makedirs(a.out, exist_ok=True)
    res = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": os.uname().nodename, "cpus": os.cpu_count(), "tiny": a.tiny,
           "runs": a.runs, "pods": a.pods, "runtimes": {}}
    if a.io_only:
        return io_only(a, res)
    if a.start_only:
        return start_only(a, res)
    c = Containerd(a.bin_dir, a.work_parent)
    res["namespace"] = c.ns
    try:
        c.import_image(a.image_layout)
        for rt in a.runtimes.split(","):
            args, why = runtime_args(rt, c)
            if why:
                res["runtimes"][rt] = {"unavailable": why}
                print(f"bench suite: {rt}: cannot run here: {why}", file=sys.stderr)
                continue
            print(f"bench suite: {rt}: start", file=sys.stderr)
            r = {"start": attempt(cases.start, c, rt, args, a.runs)}
            if "error" in r["start"] and rt != "hull":
                # The first `ctr run` failed: this runtime does not work on this host.
                res["runtimes"][rt] = {"unavailable": r["start"]["error"]}
                print(f"bench suite: {rt}: cannot run here: {r['start']['error']}", file=sys.stderr)
                continue
            print(f"bench suite: {rt}: idle pod (memory, exec, I/O)", file=sys.stderr)
            r["pod"] = attempt(cases.pod, c, rt, args, a.runs, a.io_mib, a.io_files, settle)
            if rt == "hull":
                print("bench suite: hull: I/O with the writable layer on the host", file=sys.stderr)
                host_args, _ = runtime_args("hull-host", c)
                r["io_host_layer"] = attempt(cases.io_pod, c, "hull-host", host_args, a.runs, a.io_mib,
                                             a.io_files)
            print(f"bench suite: {rt}: density ({a.pods} pods)", file=sys.stderr)
            r["density"] = attempt(cases.density, c, rt, args, a.pods, settle)
            res["runtimes"][rt] = r
    finally:
        c.close()
        res["notes"] = c.notes
    if "hull" in a.runtimes.split(","):
        print("bench suite: floor (hull bench boot)", file=sys.stderr)
        state = tempfile.mkdtemp(prefix="hull-bench-floor-", dir=a.work_parent)
        try:
            res["floor"] = attempt(cases.floor, os.path.join(a.bin_dir, "hull"), a.runs,
                                   os.path.join(a.out, "boot.json"), state)
        finally:
            shutil.rmtree(state, ignore_errors=True)
        # The runtime's cache dir rule (scripts/lib.sh, runtime/src/config.rs).
        cache = os.environ.get("HULL_CACHE_DIR") or (
            "/var/cache/hull" if os.geteuid() == 0 else os.path.expanduser("~/.cache/hull"))
        res["agent_binary"] = attempt(cases.agent_size, os.path.join(cache, "initramfs.cpio"))
    res = report.summarise(res)
    with open(os.path.join(a.out, "suite.json"), "w") as f:
        json.dump(res, f, indent=2)
    t = report.table(res)
    with open(os.path.join(a.out, "suite.txt"), "w") as f:
        f.write(t + "\n")
    with open(os.path.join(a.out, "suite.svg"), "w") as f:
        f.write(report.svg(res))
    print(t)
    print(f"written: {a.out}/suite.json, suite.txt, suite.svg")
    h = res["runtimes"].get("hull", {})
    failed = [k for k, v in h.items() if isinstance(v, dict) and "error" in v]
    if "error" in res.get("floor", {}):
        failed.append("floor")
    if failed:
        print(f"bench suite: hull's cases failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def io_only(a, res):
    """`scripts/bench io`: the I/O cases for runc, hull guest-disk and hull host, side by
    side in one containerd."""
    c = Containerd(a.bin_dir, a.work_parent)
    res["namespace"] = c.ns
    try:
        c.import_image(a.image_layout)
        for rt in ("runc", "hull-guest-disk", "hull-host"):
            args, why = runtime_args(rt, c)
            if why:
                res["runtimes"][rt] = {"unavailable": why}
                continue
            print(f"bench io: {rt} ({a.runs} runs)", file=sys.stderr)
            res["runtimes"][rt] = attempt(cases.io_pod, c, rt, args, a.runs, a.io_mib, a.io_files)
    finally:
        c.close()
    res = report.summarise(res)
    with open(os.path.join(a.out, "io.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(report.io_table(res))
    return 1 if any("error" in v for v in res["runtimes"].values()) else 0


def start_only(a, res):
    """`scripts/bench start`: runc, cold hull and pool hull side by side in one containerd.
    The pool is on while the file HULL_CONFIG names says `[pool] size = 1` (read by each
    shim `start`), so cold and pool rounds alternate by rewriting it."""
    c = Containerd(a.bin_dir, a.work_parent, hull_config="[pool]\nsize = 0\n")
    hull_bin = os.path.join(a.bin_dir, "hull")
    env = dict(os.environ, HULL_STATE_DIR=c.hull_state, HULL_CONFIG=c.hull_config)

    def pool_size(n):
        with open(c.hull_config, "w") as f:
            f.write(f"[pool]\nsize = {n}\n")

    def pool_drained():
        # No pool VM boots beside a cold run (2 cores: it would slow it).
        subprocess.run([hull_bin, "pool", "drain"], env=env, stdout=subprocess.DEVNULL, check=True)

    def pool_ready():
        p = subprocess.run([hull_bin, "pool", "fill", "--wait", "600"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            raise RuntimeError(f"hull pool fill: {p.stdout.decode(errors='replace')[-400:]}")

    res["namespace"] = c.ns
    cold, pool = {}, {}
    try:
        c.import_image(a.image_layout)
        args, why = runtime_args("runc", c)
        if why:
            res["runtimes"]["runc"] = {"unavailable": why}
        else:
            print(f"bench start: runc ({a.runs} runs)", file=sys.stderr)
            res["runtimes"]["runc"] = {"start": attempt(cases.start, c, "runc", args, a.runs)}
        hull_args, _ = runtime_args("hull", c)
        for i in range(a.runs):
            print(f"bench start: round {i + 1}/{a.runs}: cold hull, then pool hull", file=sys.stderr)
            pool_size(0)
            merge(cold, attempt(cases.start, c, "hull-cold", hull_args, 1, pool_drained, i))
            pool_size(1)
            merge(pool, attempt(cases.start, c, "hull-pool", hull_args, 1, pool_ready, i))
    finally:
        subprocess.run([hull_bin, "pool", "drain"], env=env, stdout=subprocess.DEVNULL)
        c.close()
        res["notes"] = c.notes
    res["runtimes"]["hull-cold"] = {"start": cold}
    res["runtimes"]["hull-pool"] = {"start": pool}
    with open(os.path.join(a.out, "start.json"), "w") as f:
        json.dump(res, f, indent=2)
    med = {}
    for rt in ("runc", "hull-cold", "hull-pool"):
        s = res["runtimes"].get(rt, {}).get("start", {})
        for k in ("ctr_run_true_s", "echo_first_output_s"):
            v = s.get(k) or []
            med[(rt, k)] = statistics.median(v) if v else None
        err = s.get("error")
        print(f"{rt:10} ctr run --rm true: {fmt_runs(s.get('ctr_run_true_s'))}  "
              f"first output of echo: {fmt_runs(s.get('echo_first_output_s'))}" + (f"  ERROR {err}" if err else ""))
    r, cd, pl = (med[(rt, "ctr_run_true_s")] for rt in ("runc", "hull-cold", "hull-pool"))
    ratio = lambda x, y: f"{x / y:.2f}" if x and y else "-"
    print(f"start medians: runc {r or float('nan'):.3f} s, cold {cd or float('nan'):.3f} s, "
          f"pool {pl or float('nan'):.3f} s, pool/cold {ratio(pl, cd)}, pool/runc {ratio(pl, r)}")
    failed = any("error" in res["runtimes"][rt]["start"] for rt in ("hull-cold", "hull-pool"))
    return 1 if failed or not (cd and pl) else 0


def merge(into, got):
    """Appends one round's lists to `into`; an error is kept."""
    for k, v in got.items():
        if isinstance(v, list):
            into.setdefault(k, []).extend(v)
        elif k == "error":
            into["error"] = v


def fmt_runs(v):
    if not v:
        return "-"
    return f"median {statistics.median(v):.3f} s (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})"


if __name__ == "__main__":
    sys.exit(main())
