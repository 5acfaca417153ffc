#!/bin/bash
# Containers in a real VM: boots the guest image (kernel + initramfs with the static
# agent) under QEMU microvm + TCG with vhost-device-vsock and virtiofsd, puts a busybox
# rootfs in the virtio-fs share, and runs examples/container_probe against the agent.
# Passes if every check passes and QEMU exits with rc 0.
#   agent/scripts/container-smoke.sh [CHECK,CHECK...]
# KERNEL / INITRD default to `guest-image/build --print-paths` (build the image first:
# guest-image/build --initramfs-only).
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(guest-image/build --print-paths | grep -E '^(KERNEL|INITRD)=')"
KERNEL=${KERNEL_OVERRIDE:-$KERNEL}
INITRD=${INITRD_OVERRIDE:-$INITRD}
VHOST=${VHOST:-$(command -v vhost-device-vsock || echo ~/.cargo/bin/vhost-device-vsock)}
VIRTIOFSD=${VIRTIOFSD:-$(command -v virtiofsd || echo ~/.cargo/bin/virtiofsd)}
BUSYBOX=${BUSYBOX:-/bin/busybox}
D=$(mktemp -d /tmp/hull-container-smoke.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$D"
}
trap cleanup EXIT

cargo build -q -p hull-agent --example container_probe
# The rootfs: static busybox and its applet links.
R="$D/share/rootfs"
mkdir -p "$R/bin" "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/etc" "$R/root"
cp "$BUSYBOX" "$R/bin/busybox"
# Relative links (`busybox --install -s` would point them at this host path).
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$R/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"
# Volumes, as `hull run -v` puts them in the share.
mkdir -p "$D/share/vol-rw" "$D/share/vol-ro"
echo from-host > "$D/share/vol-ro/in"
export HULL_PROBE_SHARE="$D/share"

"$VHOST" --vm "guest-cid=3,socket=$D/vhost.sock,uds-path=$D/vm.sock" > "$D/vhost.log" 2>&1 &
pids+=($!)
"$VIRTIOFSD" --socket-path "$D/fs.sock" --shared-dir "$D/share" --cache never \
  --sandbox namespace > "$D/virtiofsd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$D/vhost.sock" ] && [ -S "$D/fs.sock" ] && break; sleep 0.05; done
target/debug/examples/container_probe "$D/vm.sock" ${1:+"$1"} &
probe=$!
pids+=($probe)
sleep 0.2
rc=0
timeout 600 qemu-system-x86_64 -M microvm,acpi=off,memory-backend=mem -accel tcg -cpu max \
  -smp 2 -m 512M -object memory-backend-memfd,id=mem,size=512M,share=on \
  -nodefaults -no-user-config -nographic -no-reboot -serial "file:$D/console.log" \
  -kernel "$KERNEL" -initrd "$INITRD" \
  -append "console=ttyS0 reboot=t panic=-1 hull.log=${HULL_LOG:-info}" \
  -chardev "socket,id=vc,path=$D/vhost.sock" -device vhost-user-vsock-device,chardev=vc \
  -chardev "socket,id=fs,path=$D/fs.sock" -device vhost-user-fs-device,chardev=fs,tag=hullshare || rc=$?
probe_rc=0
wait "$probe" || probe_rc=$?
if [ "$probe_rc" != 0 ] || [ -n "${SHOW_CONSOLE:-}" ]; then
  grep -a -v '^\s*$' "$D/console.log" | tail -n "${CONSOLE_LINES:-60}" || true
fi
echo "qemu rc=$rc probe rc=$probe_rc"
[ "$rc" = 0 ] && [ "$probe_rc" = 0 ]
