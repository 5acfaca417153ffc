#!/usr/bin/env bash
# Runs inside L1 of the nested bed (`scripts/bench nested`): hull-vmm vs QEMU + KVM on
# the same SVM /dev/kvm, alternating rounds. Per round and backend: `hull vm ping`'s
# launch -> agent connected, the wall time of `hull run --image demo -- true`, and the
# VMM's memory beyond guest RAM (Pss - Pss_Shmem of hull-vmm, of QEMU + its
# vhost-device-vsock: guest RAM is a shared memfd) while a container sleeps. Then
# medians and hull-vmm/QEMU ratios. Figures only: L2 runs about 10x slower than on
# hardware, so only the ratios mean something.
# usage: l1-bench.sh BIN_DIR ROUNDS
set -u
BIN=${1:?usage: l1-bench.sh BIN_DIR ROUNDS}
ROUNDS=${2:-3}
export PATH="$BIN:$PATH"
WORK=$(mktemp -d /tmp/l1-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# shellcheck source=tests/nested/l1-lib.sh
. "$(dirname "$0")/l1-lib.sh"

# KiB of Pss minus Pss_Shmem of the processes named $@ (comm), summed.
own_kib() {
  local total=0 pid pss shm
  for pid in $(pgrep -x "$1"; shift; for n in "$@"; do pgrep -x "$n"; done); do
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null)
    shm=$(awk '/^Pss_Shmem:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null)
    total=$((total + ${pss:-0} - ${shm:-0}))
  done
  echo "$total"
}

for r in $(seq 1 "$ROUNDS"); do
  for b in hull-vmm qemu; do
    backend_config "$b"
    ping=$(timeout 480 hull vm ping 2>&1 | sed -n 's/^ready in \([0-9.]*\) s.*/\1/p')
    s=$(date +%s.%N)
    timeout 480 hull run --image demo -- true > /dev/null 2>&1; rc=$?
    e=$(date +%s.%N)
    run=$(echo "$e - $s" | bc)
    [ "$rc" = 0 ] || run=""
    timeout 480 hull run --image demo -- sh -c 'echo up; sleep 1000' > "$WORK/up" 2>&1 &
    hp=$!
    # Measured once the container runs (bounded wait), after the boot settled.
    for _ in $(seq 1 480); do grep -q '^up' "$WORK/up" && break; sleep 1; done
    sleep 10
    if [ "$b" = hull-vmm ]; then mem=$(own_kib hull-vmm); else mem=$(own_kib qemu-system-x86 vhost-device-vs); fi
    kill -INT "$hp" 2>/dev/null; wait "$hp" 2>/dev/null
    echo "round $r $b: launch->connected ${ping:-FAILED} s, hull run true ${run:-FAILED} s, VMM beyond guest RAM ${mem} KiB"
    echo "$b ${ping:-nan} ${run:-nan} $mem" >> "$WORK/rows"
  done
done

/usr/bin/python3 - "$WORK/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for b in ("hull-vmm", "qemu"):
    cols = list(zip(*[[float(x) for x in r[1:]] for r in rows if r[0] == b]))
    med[b] = [statistics.median([v for v in c if v == v]) if any(v == v for v in c) else float("nan") for c in cols]
names = ["launch -> agent connected (s)", "hull run true (s)", "VMM beyond guest RAM (KiB)"]
print(f"{'median':32} {'hull-vmm':>10} {'qemu+kvm':>10} {'ratio':>7}")
for i, n in enumerate(names):
    h, q = med["hull-vmm"][i], med["qemu"][i]
    print(f"{n:32} {h:10.2f} {q:10.2f} {h / q if q else float('nan'):7.2f}")
print("targets: hull-vmm start <= 0.7x QEMU+KVM; hull-vmm beyond guest RAM <= 3072 KiB (figures only)")
PY
