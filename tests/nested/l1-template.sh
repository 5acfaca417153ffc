#!/usr/bin/env bash
# Runs inside L1 of the nested bed, as root, on a real SVM /dev/kvm: VM templates on
# hull-vmm with the real guest (L2). `hull template build` boots a VM to "agent ready"
# and snapshots it; `hull run` restores clones from it; each clone gets its own
# entropy and clock (SetIdentity); a truncated template is rebuilt, not used.
# Prints `key=value` lines that tests/tests/nested.rs checks.
# usage: l1-template.sh BIN_DIR
set -u
BIN=${1:?usage: l1-template.sh BIN_DIR}
export PATH="$BIN:$PATH"
WORK=$(mktemp -d /tmp/l1-template.XXXXXX)
# shellcheck source=tests/nested/l1-lib.sh
. "$(dirname "$0")/l1-lib.sh"

backend_config hull-vmm
TEMPLATES=/run/hull-templates
cat >> /etc/hull/config.toml <<CONF

[template]
enabled = true
dir = "$TEMPLATES"
CONF

run build hull template build
digest=$(out build)
kv build_digest "$digest"
run ls hull template ls
kv ls_has_digest "$(grep -c "^$digest " "$WORK/ls.out")"
kv template_files "$(stat -c '%n %a %u' "$TEMPLATES/$digest"/state.json "$TEMPLATES/$digest"/memory | sed "s|$TEMPLATES/$digest/||")"
kv template_record "$(stat -c '%a %u' "$TEMPLATES/$digest.json")"
kv template_disk_kib "$(du -k "$TEMPLATES/$digest/memory" | cut -f1)"

# Two clones: the random bytes, the boot_id (made on its first read, after the
# reseed) and the clock are each clone's own.
probe='cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n"; echo; date +%s'
for c in 1 2; do
  HULL_LOG=info run "clone$c" hull run --keep-state --name "tclone$c" --image demo -- sh -c "$probe"
  # The template compiled the default seccomp profile before its snapshot: the
  # clone's container (hull's default spec carries it) does not compile it again.
  kv "clone${c}_compiled" "$(grep -c 'seccomp profile compiled' "/run/hull/vms/tclone$c/console.log")"
  rm -rf "/run/hull/vms/tclone$c"
  kv "clone${c}_l1_time" "$(date +%s)"
  kv "clone${c}_boot_id" "$(sed -n 1p "$WORK/clone$c.out")"
  kv "clone${c}_random" "$(sed -n 2p "$WORK/clone$c.out")"
  kv "clone${c}_time" "$(sed -n 3p "$WORK/clone$c.out")"
  kv "clone${c}_restored" "$(grep -c 'restored from template' "$WORK/clone$c.err")"
done

# A truncated memory file: the template is refused, rebuilt, and the run works.
truncate -s 4096 "$TEMPLATES/$digest/memory"
HULL_LOG=info run truncated hull run --image demo -- echo after the truncation
kv truncated_out "$(out truncated)"
kv truncated_said "$(grep -c 'rebuilding' "$WORK/truncated.err")"
kv truncated_restored "$(grep -c 'restored from template' "$WORK/truncated.err")"
kv rebuilt_size_ok "$(test "$(stat -c %s "$TEMPLATES/$digest/memory")" -gt 4096 && echo 1)"

run rm hull template rm --all
run ls_after hull template ls
kv ls_after_lines "$(wc -l < "$WORK/ls_after.out")"
kv templates_left "$(find "$TEMPLATES" -mindepth 1 -not -name '*.lock' | wc -l)"

left_sandboxes
kv left_processes "$(vm_processes)"
rm -rf "$WORK"
kv finished 1
