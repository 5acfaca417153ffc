# Shared by hull's scripts: where caches live and how cargo is run. Source it.
# shellcheck shell=bash

# Cache dir rule, same as the runtime's (runtime/src/config.rs) and guest-image/build.
if [ -n "${HULL_CACHE_DIR:-}" ]; then :
elif [ "$(id -u)" = 0 ]; then HULL_CACHE_DIR=/var/cache/hull
else HULL_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/hull"
fi
export HULL_CACHE_DIR

# Cargo's build artefacts live outside the work tree, keyed by the toolchain, so a
# fresh clone (CI) reuses every dependency already built on this machine.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  _rustc_key=$(rustc -vV 2>/dev/null | sha256sum | cut -c1-12)
  export CARGO_TARGET_DIR="$HULL_CACHE_DIR/cargo-target/$_rustc_key"
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }
