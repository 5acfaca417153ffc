#!/usr/bin/env bash
# Runs inside L1 of the nested bed (`scripts/nested run`), as root: a containerd in L1
# (the host's binary) runs hull's shim on hull-vmm, on L1's cgroup v2 and with a pod
# network that hull-vmm's virtio-net carries. Prints `key=value` lines that
# tests/tests/nested.rs checks (never asserted here); stderr is prefixed by key.
#   - `ctr run`: output and exit code;
#   - a pod in a CNI-style netns (a veth with an address and a default route, as CNI's
#     bridge plugin leaves it): the shim wires it to a tap, hull-vmm's virtio-net carries
#     it; HTTP both ways between L1 and the container;
#   - exec: output and exit code; `--cpus 2`: two vCPUs and the quota in the guest;
#   - the pod's cgroup (v2): the VMM and the shim in it, the guest's memory charged;
#   - kill, delete: no VM process, shim, sandbox, cgroup, tap or mount left.
# usage: l1-containerd.sh BIN_DIR   (BIN_DIR: the built hull, hull-vmm, the shim)
set -u
BIN=${1:?usage: l1-containerd.sh BIN_DIR}
export PATH="$BIN:$PATH"
WORK=$(mktemp -d /tmp/l1-containerd.XXXXXX)
# shellcheck source=tests/nested/l1-lib.sh
. "$(dirname "$0")/l1-lib.sh"

RUNTIME=io.containerd.hull.v2
CD=/run/l1-containerd          # L1's tmpfs: the overlay snapshotter's upper dirs need one
NS=hullpod                     # the pod's netns (/var/run/netns/hullpod)
POD_IP=10.77.0.2 HOST_IP=10.77.0.1
MIB=1048576

backend_config hull-vmm
kv cgroup_fs "$(stat -fc %T /sys/fs/cgroup)"
kv shim "$(command -v containerd-shim-hull-v2)"

mkdir -p "$CD"
cat > "$CD/config.toml" <<CONF
version = 2
root = "$CD/root"
state = "$CD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CD/containerd.sock"
CONF
containerd --config "$CD/config.toml" > "$WORK/containerd.log" 2>&1 &
containerd_pid=$!
CTR=(ctr --address "$CD/containerd.sock")
containerd_up() { "${CTR[@]}" version > /dev/null 2>&1; }
wait_until 120 containerd_up
kv containerd_up "$(containerd_up && echo 1)"

tar -cf "$WORK/demo.tar" -C "$(hull image path demo)" .
run import "${CTR[@]}" images import --base-name demo "$WORK/demo.tar"

# A task's output and exit code.
run ctr_run "${CTR[@]}" run --rm --runtime "$RUNTIME" demo:latest c0 sh -c 'echo hello from containerd; exit 5'
kv ctr_run_out "$(out ctr_run)"

# The pod: ctr's spec has no /sys/fs/cgroup, CRI's has; given here to read cpu.max.
# The pod's network, made as CNI's bridge plugin leaves it: a veth into the netns with
# the pod's address and a default route; L1 at the other end serves a page.
ip netns add "$NS"
ip link add hullveth type veth peer name eth0 netns "$NS"
ip addr add "$HOST_IP/24" dev hullveth && ip link set hullveth up
ip -n "$NS" addr add "$POD_IP/24" dev eth0 && ip -n "$NS" link set eth0 up && ip -n "$NS" link set lo up
ip -n "$NS" route add default via "$HOST_IP"
mkdir -p "$WORK/www" && echo from-l1 > "$WORK/www/index.html"
busybox httpd -f -p "$HOST_IP:8081" -h "$WORK/www" &
httpd_pid=$!

run pod "${CTR[@]}" run -d --runtime "$RUNTIME" --with-ns "network:/var/run/netns/$NS" \
  --memory-limit $((256 * MIB)) --cpus 2 \
  --mount type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev demo:latest p1 \
  sh -c 'mkdir /www && echo from-l2 > /www/index.html && exec httpd -f -p 8080 -h /www'

# L1 -> the container (the tap, hull-vmm's virtio-net, the guest's eth0).
# (busybox-static's wget crashes on -T: the deadlines are timeout's and run's.)
fetch_pod() { timeout 10 wget -q -O "$WORK/from_pod" "http://$POD_IP:8080/" 2> /dev/null; }
wait_until 300 fetch_pod
kv net_l1_to_pod "$(cat "$WORK/from_pod" 2> /dev/null)"
# The container -> L1.
run net_pod_to_l1 "${CTR[@]}" task exec --exec-id e1 p1 wget -q -O - "http://$HOST_IP:8081/"
kv net_pod_to_l1_out "$(out net_pod_to_l1)"
kv guest_eth0 "$("${CTR[@]}" task exec --exec-id e2 p1 ip -o -4 addr show dev eth0 2> /dev/null | awk '{print $4}')"
kv taps "$(ip -n "$NS" -o link show | grep -c hulltap)"

run exec "${CTR[@]}" task exec --exec-id e3 p1 sh -c 'echo exec out; exit 3'
kv exec_out "$(out exec)"
run cpus "${CTR[@]}" task exec --exec-id e4 p1 sh -c 'nproc; cat /sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup)/cpu.max'
kv cpus_out "$(out cpus)"

# The pod's cgroup on v2: ctr's cgroupsPath is /<namespace>/<id>.
cg=/sys/fs/cgroup/default/p1
vmm=$(pgrep -x hull-vmm | head -1)
shim=$(pgrep -f "containerd-shim-hull-v2 .*-id p1" | head -1)
kv cgroup_vmm "$(cut -d: -f3 "/proc/$vmm/cgroup" 2> /dev/null)"
kv cgroup_shim "$(cut -d: -f3 "/proc/$shim/cgroup" 2> /dev/null)"
kv cgroup_max_mib "$(( $(cat "$cg/memory.max" 2> /dev/null || echo 0) / MIB ))"
before=$(cat "$cg/memory.current" 2> /dev/null || echo 0)
run hog "${CTR[@]}" task exec --exec-id e5 p1 awk 'BEGIN { s = sprintf("%100000000s", ""); print length(s) }'
kv hog_out "$(out hog)"
after=$(cat "$cg/memory.current" 2> /dev/null || echo 0)
kv cgroup_grew_mib "$(( (after - before) / MIB ))"

# Kill and delete: nothing left.
run kill "${CTR[@]}" task kill -s SIGKILL p1
stopped() { "${CTR[@]}" task ls 2> /dev/null | grep -q '^p1 .*STOPPED'; }
wait_until 120 stopped
kv stopped "$(stopped && echo 1)"
run delete "${CTR[@]}" task delete p1
run rm "${CTR[@]}" containers rm p1
gone() { [ ! -d "$cg" ] && [ "$(vm_processes)" = 0 ] && ! pgrep -f containerd-shim-hull-v2 > /dev/null; }
wait_until 60 gone
kv left_cgroup "$([ -d "$cg" ] && echo "$cg")"
kv left_processes "$(vm_processes)"
kv left_shims "$(pgrep -fc containerd-shim-hull-v2)"
kv left_taps "$(ip -n "$NS" -o link show | grep -c hulltap)"
left_sandboxes
kv left_mounts "$(grep -c " $CD/state/" /proc/mounts)"

kill "$httpd_pid" 2> /dev/null
kill "$containerd_pid" 2> /dev/null; wait "$containerd_pid" 2> /dev/null
ip netns del "$NS"; ip link del hullveth 2> /dev/null
sed 's/^/[containerd] /' "$WORK/containerd.log" | grep -iE 'level=(error|warn)' | tail -20 >&2
rm -rf "$WORK"
kv finished 1
