#!/bin/bash
# Boots the static agent as /init of a minimal initramfs under QEMU microvm + TCG and
# drives it from the host through vhost-device-vsock (examples/boot_probe.rs).
# Needs: a guest kernel (default /var/cache/hull/vmlinux), qemu-system-x86_64,
# vhost-device-vsock, cpio. Passes if the probe passes and QEMU exits with rc 0.
#   agent/scripts/boot-smoke.sh [extra kernel args]
set -euo pipefail
cd "$(dirname "$0")/../.."
KERNEL=${KERNEL:-/var/cache/hull/vmlinux}
VHOST=${VHOST:-$(command -v vhost-device-vsock || echo ~/.cargo/bin/vhost-device-vsock)}
D=$(mktemp -d /tmp/hull-boot-smoke.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Same as guest-image/build: static glibc, and libseccomp linked in statically (a
# dynamically linked libseccomp in a static-pie binary crashes at start).
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build -q --release -p hull-agent --target x86_64-unknown-linux-gnu
cargo build -q -p hull-agent --example boot_probe
mkdir -p "$D/root/dev"
cp target/x86_64-unknown-linux-gnu/release/hull-agent "$D/root/init"
mknod "$D/root/dev/console" c 5 1
(cd "$D/root" && find . | cpio -o -H newc --quiet | gzip -1 > "$D/initrd.cpio.gz")

"$VHOST" --vm "guest-cid=3,socket=$D/vhost.sock,uds-path=$D/vm.sock" > "$D/vhost.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$D/vhost.sock" ] && break; sleep 0.05; done
target/debug/examples/boot_probe "$D/vm.sock" &
probe=$!
pids+=($probe)
sleep 0.2
rc=0
timeout 120 qemu-system-x86_64 -M microvm,acpi=off,memory-backend=mem -accel tcg -cpu max \
  -smp 1 -m 256M -object memory-backend-memfd,id=mem,size=256M,share=on \
  -nodefaults -no-user-config -nographic -no-reboot -serial "file:$D/console.log" \
  -kernel "$KERNEL" -initrd "$D/initrd.cpio.gz" \
  -append "console=ttyS0 reboot=t panic=-1 hull.log=debug $*" \
  -chardev "socket,id=vc,path=$D/vhost.sock" -device vhost-user-vsock-device,chardev=vc || rc=$?
probe_rc=0
wait "$probe" || probe_rc=$?
grep -a 'hull-agent\|reboot:\|Kernel panic' "$D/console.log" || true
echo "qemu rc=$rc probe rc=$probe_rc (logs in $D)"
[ "$rc" = 0 ] && [ "$probe_rc" = 0 ]
