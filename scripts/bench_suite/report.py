"""The suite's output: min/median/max of every series, a plain table with ratios, and a
hand-written SVG chart (hull's start phases next to the peers' starts, memory per pod)."""
import html

PEERS = ("runc", "youki", "crun", "runsc")


def stats(v):
    if not isinstance(v, list) or not v:
        return None
    s = sorted(v)
    n = len(s)
    med = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return {"min": round(s[0], 4), "median": round(med, 4), "max": round(s[-1], 4), "n": n}


def summarise(x):
    """Replaces each list of numbers by its stats, recursively (keeps the raw values)."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if isinstance(v, list) and v and all(isinstance(i, (int, float)) for i in v):
                out[k] = {**stats(v), "values": [round(i, 4) for i in v]}
            else:
                out[k] = summarise(v)
        return out
    return x


# (label, case, key, unit) of the table's rows.
ROWS = [
    ("start: ctr run --rm true", "start", "ctr_run_true_s", "s"),
    ("start: first output of echo", "start", "echo_first_output_s", "s"),
    ("exec latency (true)", "pod", "exec_true_s", "s"),
    ("teardown (idle pod)", "density", "teardown_s", "s"),
    ("memory per pod: host PSS", "pod", "host_pss_mib", "MiB"),
    ("memory per pod: shim RSS", "pod", "shim_rss_mib", "MiB"),
    ("memory per pod: guest in use", "pod", "guest_in_use_mib", "MiB"),
    ("density: 1st pod start", "density", "first", "s"),
    ("density: last pod start", "density", "last", "s"),
    ("density: PSS of all pods", "density", "host_pss_mib", "MiB"),
    ("I/O: sequential write", "pod", "io_write_s", "s"),
    ("I/O: sequential read", "pod", "io_read_s", "s"),
    ("I/O: small-file creates", "pod", "io_small_files_s", "s"),
    ("I/O, host layer: seq. write", "io_host_layer", "io_write_s", "s"),
    ("I/O, host layer: seq. read", "io_host_layer", "io_read_s", "s"),
    ("I/O, host layer: creates", "io_host_layer", "io_small_files_s", "s"),
]


def io_table(res):
    """`scripts/bench io`'s table: medians (min-max) per runtime, ratios to runc, and
    the one-line summary of creates."""
    rts = ("runc", "hull-guest-disk", "hull-host")
    rows = [("sequential write + fsync", "io_write_s"), ("sequential read", "io_read_s"),
            ("small-file creates", "io_small_files_s")]
    lines = [f"{'case':26} " + " ".join(f"{r:>24}" for r in rts) + "  guest-disk/runc  host/runc  host/guest-disk"]
    med = {}
    for label, key in rows:
        vals = {}
        for r in rts:
            c = res["runtimes"].get(r, {})
            v = c.get(key) if isinstance(c, dict) else None
            vals[r] = v if isinstance(v, dict) and "median" in v else None
            med[(r, key)] = vals[r]["median"] if vals[r] else None

        def ratio(a, b):
            x, y = med[(a, key)], med[(b, key)]
            return f"{x / y:.1f}x" if x and y else "-"
        lines.append(f"{label:26} " + " ".join(f"{cell(vals[r], 's'):>24}" for r in rts) +
                     f"  {ratio('hull-guest-disk', 'runc'):>15}  {ratio('hull-host', 'runc'):>9}"
                     f"  {ratio('hull-host', 'hull-guest-disk'):>15}")
    for r in rts:
        c = res["runtimes"].get(r, {})
        if "unavailable" in c:
            lines.append(f"{r}: cannot run here: {c['unavailable']}")
        if "error" in c:
            lines.append(f"{r}: failed: {c['error']}")
    some = next((c for c in res["runtimes"].values() if isinstance(c, dict) and "io_mib" in c), None)
    if some:
        lines.append(f"I/O: {some['io_mib']} MiB written with dd conv=fsync and read back, {some['io_files']} "
                     f"empty files created in a new dir, in the container's rootfs; each figure includes one exec")
    k = "io_small_files_s"
    a, b, h = med[("runc", k)], med[("hull-guest-disk", k)], med[("hull-host", k)]
    fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
    r = f"{b / a:.1f}" if a and b else "-"
    lines.append(f"creates medians: runc {fmt(a)} s, guest-disk {fmt(b)} s, host {fmt(h)} s, guest-disk/runc {r}")
    return "\n".join(lines)


def value(res, rt, case, key):
    c = res["runtimes"].get(rt, {}).get(case)
    if not isinstance(c, dict) or "error" in c:
        return None
    if case == "density" and key in ("first", "last"):
        s = c.get("start_s", {}).get("values") or []
        return {"median": s[0] if key == "first" else s[-1]} if s else None
    v = c.get(key)
    if isinstance(v, (int, float)):
        return {"median": v}
    return v if isinstance(v, dict) and "median" in v else None


def cell(v, unit):
    if v is None:
        return "-"
    if "min" in v and v["n"] > 1:
        return f"{v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f})" if unit == "s" else f"{v['median']:.1f}"
    return f"{v['median']:.3f}" if unit == "s" else f"{v['median']:.1f}"


def table(res):
    rts = ["hull", *PEERS]
    lines = [f"{'case':32} {'unit':4} " + " ".join(f"{r:>22}" for r in rts) + "  " +
             " ".join(f"{'hull/' + p:>11}" for p in (*PEERS, "floor"))]
    fl = res.get("floor") or {}
    for label, case, key, unit in ROWS:
        vals = {r: value(res, r, case, key) for r in rts}
        h = vals["hull"]
        ratios = []
        for p in PEERS:
            v = vals[p]
            ratios.append(f"{h['median'] / v['median']:.1f}x" if h and v and v["median"] else "-")
        floor = None
        if key == "ctr_run_true_s" and fl.get("floor_total_s"):
            floor = fl["floor_total_s"]["median"]
        ratios.append(f"{h['median'] / floor:.1f}x" if h and floor else "-")
        lines.append(f"{label:32} {unit:4} " + " ".join(f"{cell(vals[r], unit):>22}" for r in rts) + "  " +
                     " ".join(f"{x:>11}" for x in ratios))
    for p in (*PEERS, "hull"):
        c = res["runtimes"].get(p, {})
        if "unavailable" in c:
            lines.append(f"{p}: cannot run here: {c['unavailable']}")
        for case, v in c.items():
            if isinstance(v, dict) and "error" in v:
                lines.append(f"{p} {case}: failed: {v['error']}")
    if "error" in fl:
        lines.append(f"floor: failed: {fl['error']}")
    elif fl:
        lines.append(f"floor (hull bench boot, {fl['backend']}): trivial /init reached "
                     f"{fl['floor_init_s']['median']:.3f} s, VM exited {fl['floor_total_s']['median']:.3f} s; "
                     f"hull VM agent connected {fl['hull_vm_connected_s']['median']:.3f} s "
                     f"({fl['ratio_ready']:.2f}x the floor's /init)")
    for n in res.get("notes") or []:
        lines.append(f"note: {n}")
    ag = res.get("agent_binary") or {}
    if "error" in ag:
        lines.append(f"agent binary: failed: {ag['error']}")
    elif ag:
        lines.append(f"agent binary (/init in {ag['path']}): {ag['bytes'] / 1e6:.2f} MB ({ag['mib']:.2f} MiB); "
                     f"the initramfs {ag.get('initramfs_bytes', 0) / 1e6:.2f} MB")
    io = res["runtimes"].get("hull", {}).get("pod", {})
    if isinstance(io, dict) and "io_mib" in io:
        lines.append(f"I/O: {io['io_mib']} MiB written with dd conv=fsync and read back (warm cache), "
                     f"{io['io_files']} empty files created, in the container's rootfs; each figure "
                     f"includes one exec (see exec latency)")
    return "\n".join(lines)


COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
          "#9c755f", "#bab0ac", "#86bcb6"]


def svg(res):
    """Two horizontal bar charts: start (hull's phases stacked; peers and the floor as
    single bars) and host memory per idle pod (stacked by process; hull's guest in use)."""
    W, left, barh, gap = 900, 170, 22, 8
    out, y = [], 30

    def text(x, yy, s, anchor="start", size=12, weight="normal"):
        out.append(f'<text x="{x}" y="{yy}" font-size="{size}" font-weight="{weight}" '
                   f'text-anchor="{anchor}" font-family="sans-serif">{html.escape(str(s))}</text>')

    def chart(title, rows, unit):
        nonlocal y
        text(10, y, title, size=14, weight="bold")
        y += 14
        top = max([sum(v for _, v in segs) for _, segs in rows] or [1]) or 1
        scale = (W - left - 90) / top
        legend = {}
        for label, segs in rows:
            text(left - 6, y + barh - 6, label, anchor="end")
            x = left
            for name, v in segs:
                color = legend.setdefault(name, COLORS[len(legend) % len(COLORS)])
                w = max(v * scale, 0.5)
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{barh}" fill="{color}">'
                           f'<title>{html.escape(name)}: {v:.3f} {unit}</title></rect>')
                x += w
            text(x + 4, y + barh - 6, f"{sum(v for _, v in segs):.3f} {unit}" if unit == "s"
                 else f"{sum(v for _, v in segs):.1f} {unit}")
            y += barh + gap
        lx = left
        for name, color in legend.items():
            if lx > W - 150:
                lx, y = left, y + 16
            out.append(f'<rect x="{lx}" y="{y + 4}" width="10" height="10" fill="{color}"/>')
            text(lx + 14, y + 13, name, size=11)
            lx += 20 + 7 * len(name)
        y += 40

    start_rows = []
    h = res["runtimes"].get("hull", {}).get("start", {})
    if isinstance(h, dict) and h.get("phases_s"):
        start_rows.append(("hull (phases)", [(k, v["median"]) for k, v in h["phases_s"].items()]))
    for rt in ("hull", *PEERS):
        v = value(res, rt, "start", "ctr_run_true_s")
        if v:
            start_rows.append((rt, [("ctr run --rm true", v["median"])]))
    fl = res.get("floor") or {}
    if fl.get("floor_total_s"):
        start_rows.append(("floor (trivial /init)", [("floor VM launch -> exit", fl["floor_total_s"]["median"])]))
    chart("Start: ctr run --rm IMAGE true (median seconds)", start_rows, "s")
    mem_rows = []
    for rt in ("hull", *PEERS):
        p = res["runtimes"].get(rt, {}).get("pod")
        if isinstance(p, dict) and "memory_mib" in p:
            mem_rows.append((f"{rt} host PSS", list(p["memory_mib"].items())))
            if "guest_in_use_mib" in p:
                mem_rows.append((f"{rt} guest in use", [("guest memory in use", p["guest_in_use_mib"])]))
    chart("Memory per idle pod (MiB)", mem_rows, "MiB")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" viewBox="0 0 {W} {y}">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(out) + "\n</svg>\n")
