# Sourced by the scripts that run inside L1 of the nested bed (l1-checks.sh,
# l1-containerd.sh): the result lines and commands with a deadline, and hull's config
# in L1. Needs BIN (the built binaries' dir) and WORK (a temp dir) set.

DEADLINE=${DEADLINE:-480}   # per command (the boot deadlines below are within it)

# kv KEY VALUE: one `key=value` result line (newlines folded to spaces).
kv() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n' ' ' | sed 's/ *$//')"; }

# run KEY CMD...: runs CMD with the deadline; its stdout in $WORK/KEY.out, stderr shown
# live, prefixed; prints KEY_rc. CMD's stdin is the caller's.
run() {
  local key=$1; shift
  local rc=0
  echo "[$key] $(date +%T) $*" >&2
  timeout -k 10 "$DEADLINE" "$@" > "$WORK/$key.out" 2> >(tee "$WORK/$key.err" | sed "s/^/[$key] /" >&2) || rc=$?
  kv "${key}_rc" "$rc"
}
out() { cat "$WORK/$1.out"; }

# wait_until SECONDS CMD...: polls CMD once a second until it succeeds; 1 at the deadline.
wait_until() {
  local secs=$1; shift
  for _ in $(seq 1 "$secs"); do "$@" && return 0; sleep 1; done
  return 1
}

# hull's config in L1: the backend ($1), the built hull-vmm (a bare name would find an
# installed one first), boot deadlines for L2, which runs about 10x slower than a TCG
# guest (more on a loaded host): the checks prove behaviour, not speed; and the scratch
# disks on L1's own tmpfs (/run): the default dir is the host's, read-only over 9p.
backend_config() {
  mkdir -p /etc/hull
  cat > /etc/hull/config.toml <<CONF
[hypervisor]
backend = "$1"
hull_vmm = "$BIN/hull-vmm"

[boot]
kernel_timeout_secs = 200.0
init_timeout_secs = 300.0
agent_timeout_secs = 400.0
request_timeout_secs = 120.0
shutdown_timeout_secs = 60.0

[rootfs]
scratch_dir = "/run/hull-scratch"
scratch_size_mib = 1024
CONF
}

# VM processes of any sandbox in L1.
vm_processes() { ps -eo comm= | grep -cxE 'hull-vmm|qemu-system-x86|virtiofsd|vhost-device-vs'; }

# left_sandboxes: how many VM state dirs are left (the result), and what is in each
# (on stderr, to tell which run left it).
left_sandboxes() {
  local vms="${HULL_STATE_DIR:-/run/hull}/vms"
  kv left_sandboxes "$(find "$vms" -mindepth 1 -maxdepth 1 2> /dev/null | wc -l)"
  find "$vms" -mindepth 1 -maxdepth 2 -printf '[left] %p %s bytes %TT\n' 2> /dev/null >&2
  cat "$vms"/*/leftovers.json "$vms"/*/console.log 2> /dev/null | tail -30 | sed 's/^/[left] /' >&2
}
