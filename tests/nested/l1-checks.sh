#!/usr/bin/env bash
# Runs inside L1 of the nested bed (`scripts/nested run`), as root, on a real SVM
# /dev/kvm: hull's KVM path with the real guest (L2) on hull-vmm, then QEMU + KVM.
# Prints `key=value` lines (one value per line, never asserted here) that
# tests/tests/nested.rs checks; each command's stderr goes to stderr, prefixed by its key.
# usage: l1-checks.sh BIN_DIR   (BIN_DIR: the built hull, hull-vmm; first in PATH)
set -u
BIN=${1:?usage: l1-checks.sh BIN_DIR}
export PATH="$BIN:$PATH"
WORK=$(mktemp -d /tmp/l1-checks.XXXXXX)
# shellcheck source=tests/nested/l1-lib.sh
. "$(dirname "$0")/l1-lib.sh"

kv hull "$(command -v hull)"
kv kvm_module "$(grep -o '^kvm_amd' /proc/modules)"

# What hull makes of this host, with backend auto (the default).
backend_config auto
run check hull check
kv check_kvm "$(grep '^KVM ' "$WORK/check.out")"
kv check_vmm_binary "$(grep -E '^hull-vmm {2,}' "$WORK/check.out")"
kv check_vmm_support "$(sed -n 's/^hull-vmm: //p' "$WORK/check.out")"
kv check_backend "$(sed -n 's/^backend: //p' "$WORK/check.out")"

for b in hull-vmm qemu; do
  p=${b//-/_}
  backend_config "$b"
  run "${p}_ping" hull vm ping
  kv "${p}_ping_agent" "$(grep '^agent: ' "$WORK/${p}_ping.out")"
  kv "${p}_ping_on" "$(sed -n 's/^ready in [0-9.]* s on \(.*\) (from launch.*/\1/p' "$WORK/${p}_ping.out")"

  run "${p}_echo" hull run --image demo -- echo hello from L2
  kv "${p}_echo_out" "$(out "${p}_echo")"

  run "${p}_exit7" hull run --image demo -- sh -c 'exit 7'
done

# The rest on hull-vmm, our own VMM.
backend_config hull-vmm

# stdin: bytes piped in come back unchanged (cat), binary ones included.
printf 'first line\nsecond \001\002\377 end' > "$WORK/stdin.in"
kv stdin_sent "$(od -An -tx1 "$WORK/stdin.in" | tr -d ' \n')"
run stdin hull run -i --image demo -- cat < "$WORK/stdin.in"
kv stdin_back "$(od -An -tx1 "$WORK/stdin.out" | tr -d ' \n')"

# A volume both ways: the container reads what L1 put there and writes a file L1 sees.
vol="$WORK/vol"; mkdir -p "$vol"; echo from-l1 > "$vol/in"
run volume hull run -v "$vol:/data" --image demo -- sh -c 'cat /data/in; echo from-container > /data/out'
kv volume_read "$(out volume)"
kv volume_file "$(cat "$vol/out" 2>/dev/null)"

# The writable layer on hull-vmm's virtio-blk, driven by the Linux guest: the container's
# root is the agent's overlay on the pod's scratch disk (an fd hull-vmm inherits; no
# FLUSH offered, so the guest sees a write-through cache), and what it writes reads back.
run scratch hull run --image demo -- sh -c 'grep " / " /proc/mounts | cut -d" " -f3; cat /sys/block/vda/serial; echo; cat /sys/block/vda/queue/write_cache; seq 1 50000 > /n; sync; tail -1 /n'
kv scratch_out "$(out scratch)"

# --cpus 2: the VM gets two vCPUs (on L1's one) and the container's cgroup the quota.
run cpus hull run --cpus 2 --image demo -- sh -c 'nproc; cat /sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup)/cpu.max'
kv cpus_out "$(out cpus)"

# An OOM kill: a 32M container that eats memory ends with 137, and hull says OOM.
run oom hull run -m 32M --image demo -- tail /dev/zero
kv oom_said "$(grep -c 'hull: OOM' "$WORK/oom.err")"

# 8 MiB of output, byte for byte (L1 makes the same bytes with its own seq and head).
big='seq 1 2000000 | head -c 8388608'
kv big_sent "$(bash -c "$big" | sha256sum | cut -d' ' -f1)"
run big hull run --image demo -- sh -c "$big"
kv big_size "$(stat -c %s "$WORK/big.out")"
kv big_back "$(sha256sum < "$WORK/big.out" | cut -d' ' -f1)"

# hull-vmm jailed as in production while it runs Linux: the sandbox uid, no
# capabilities, no_new_privs, and a seccomp filter on every vCPU and event-loop thread.
timeout -k 10 "$DEADLINE" hull run --image demo -- sh -c 'echo up; sleep 600' > "$WORK/jail.out" 2> "$WORK/jail.err" &
jail_run=$!
for _ in $(seq 1 "$DEADLINE"); do grep -q '^up' "$WORK/jail.out" && break; kill -0 "$jail_run" 2>/dev/null || break; sleep 1; done
kv jail_up "$(cat "$WORK/jail.out")"
vmm=$(pgrep -x hull-vmm | head -1)
st() { sed -n "s/^$1:[[:space:]]*//p" "/proc/$vmm/status" 2>/dev/null | awk '{print $1}'; }
kv jail_uid "$(st Uid)"
kv jail_capeff "$(st CapEff)"
kv jail_nnp "$(st NoNewPrivs)"
threads=0; filtered=0
for t in /proc/"$vmm"/task/*; do
  [ -n "$vmm" ] && [ -f "$t/status" ] || continue
  case "$(cat "$t/comm")" in vcpu*|vmm-events) ;; *) continue ;; esac
  threads=$((threads + 1))
  grep -qx $'Seccomp:\t2' "$t/status" && filtered=$((filtered + 1))
done
kv jail_threads "$threads"
kv jail_filtered "$filtered"
# Two SIGINTs to hull itself (the first is forwarded to the container, whose PID 1
# ignores it; the second tears down at once), not through timeout(1): its signal to the
# process group can merge with its own into one, and its kill-after would then SIGKILL
# hull within the grace hull gives a forwarded signal, leaving the state dir behind.
hull_pid=$(pgrep -P "$jail_run" -x hull || echo "$jail_run")
kill -INT "$hull_pid" 2>/dev/null; sleep 1; kill -INT "$hull_pid" 2>/dev/null
wait "$jail_run" 2>/dev/null
sed 's/^/[jail] /' "$WORK/jail.err" >&2

# Nothing left: no sandbox, no VM process, no state dir.
left_sandboxes
kv left_processes "$(vm_processes)"
rm -rf "$WORK"
kv finished 1
