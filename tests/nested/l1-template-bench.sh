#!/usr/bin/env bash
# Runs inside L1 of the nested bed (`scripts/bench template`): VM templates on hull-vmm,
# cold boot vs restore from a template, on the same SVM /dev/kvm. Per round (cold and
# restored alternate): the wall time of `hull run --image demo -- true` and the boot
# report's launch -> agent connected. Then the memory of PODS idle pods started cold
# and of PODS restored from one template: the summed Pss of their VM processes
# (hull-vmm and virtiofsd, guest RAM included). Figures only: L2 runs about 10x slower
# than on hardware, so only the ratios mean something.
# usage: l1-template-bench.sh BIN_DIR ROUNDS PODS
set -u
BIN=${1:?usage: l1-template-bench.sh BIN_DIR ROUNDS PODS}
ROUNDS=${2:-3}
PODS=${3:-10}
export PATH="$BIN:$PATH"
WORK=$(mktemp -d /tmp/l1-template-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# shellcheck source=tests/nested/l1-lib.sh
. "$(dirname "$0")/l1-lib.sh"

# config MODE: hull-vmm, templates on (restored) or off (cold).
config() {
  backend_config hull-vmm
  printf '\n[template]\nenabled = %s\ndir = "/run/hull-templates"\n' \
    "$([ "$1" = restored ] && echo true || echo false)" >> /etc/hull/config.toml
}

config restored
digest=$(timeout 480 hull template build) || { echo "template build failed"; exit 1; }
echo "template $digest: $(du -k "/run/hull-templates/$digest/memory" | cut -f1) KiB of guest memory on disk"

for r in $(seq 1 "$ROUNDS"); do
  for mode in cold restored; do
    config "$mode"
    s=$(date +%s.%N)
    HULL_LOG=info timeout 480 hull run --image demo -- true > /dev/null 2> "$WORK/err"; rc=$?
    e=$(date +%s.%N)
    run=$(echo "$e - $s" | bc)
    [ "$rc" = 0 ] || run=""
    ready=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/err" | sed -n 's/.*report=ready in \([0-9.]*\) s.*/\1/p' | head -1)
    restored=$(grep -c 'restored from template' "$WORK/err")
    echo "round $r $mode: hull run true ${run:-FAILED} s, launch -> connected ${ready:-FAILED} s (restored: $restored)"
    echo "$mode ${run:-nan} ${ready:-nan}" >> "$WORK/rows"
  done
done

# Summed Pss (KiB) of every hull-vmm and virtiofsd: guest RAM (a memfd both map) counted once.
vm_pss_kib() {
  local total=0 pid pss
  for pid in $(pgrep -x hull-vmm; pgrep -x virtiofsd); do
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null)
    total=$((total + ${pss:-0}))
  done
  echo "$total"
}

for mode in cold restored; do
  config "$mode"
  pids=()
  for p in $(seq 1 "$PODS"); do
    timeout 1200 hull run --image demo -- sh -c 'echo up; sleep 1000' > "$WORK/up$p" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 480); do grep -q '^up' "$WORK/up$p" && break; sleep 1; done
  done
  sleep 10
  up=$(grep -l '^up' "$WORK"/up* 2>/dev/null | wc -l)
  kib=$(vm_pss_kib)
  echo "$PODS idle pods $mode: $up up, VM processes' Pss $kib KiB"
  echo "$mode $kib $up" >> "$WORK/pss"
  # Two SIGINTs to each hull itself (the first goes to the container, whose PID 1
  # ignores it; the second tears down), not through timeout(1), which may merge them.
  hulls=()
  for pid in "${pids[@]}"; do hulls+=("$(pgrep -P "$pid" -x hull || echo "$pid")"); done
  for h in "${hulls[@]}"; do kill -INT "$h" 2>/dev/null; done
  sleep 1
  for h in "${hulls[@]}"; do kill -INT "$h" 2>/dev/null; done
  wait
  rm -f "$WORK"/up*
done
timeout 120 hull template rm --all > /dev/null

/usr/bin/python3 - "$WORK/rows" "$WORK/pss" "$PODS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
pss = {l.split()[0]: (int(l.split()[1]), int(l.split()[2])) for l in open(sys.argv[2])}
pods = int(sys.argv[3])
def med(mode, i):
    v = [float(r[i]) for r in rows if r[0] == mode and r[i] != "nan"]
    return statistics.median(v) if v else float("nan")
cold_run, rest_run = med("cold", 1), med("restored", 1)
cold_ready, rest_ready = med("cold", 2), med("restored", 2)
print(f"{'median':32} {'cold':>8} {'restored':>9} {'ratio':>6}")
print(f"{'hull run true (s)':32} {cold_run:8.2f} {rest_run:9.2f} {rest_run / cold_run:6.2f}")
print(f"{'launch -> agent connected (s)':32} {cold_ready:8.2f} {rest_ready:9.2f} {rest_ready / cold_ready:6.2f}")
c, r = pss["cold"][0] / 1024, pss["restored"][0] / 1024
print(f"{'Pss of ' + str(pods) + ' idle pods (MiB)':32} {c:8.1f} {r:9.1f} {r / c if c else float('nan'):6.2f}")
print("targets: restored start <= 0.35x cold; 10 restored pods <= 0.6x the Pss of 10 cold pods")
print(f"template medians: cold {cold_run:.2f} s, restored {rest_run:.2f} s, restored/cold {rest_run / cold_run:.2f}; "
      f"Pss of {pods} pods: cold {c:.0f} MiB, restored {r:.0f} MiB, restored/cold {r / c if c else float('nan'):.2f}")
PY
