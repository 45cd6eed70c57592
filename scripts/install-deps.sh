#!/usr/bin/env bash
# Install what pailfs needs to build, test, benchmark and demo on Debian/Ubuntu (`--demo`: only
# what the demo needs):
# fuse3 (fusermount3), s3fs and rclone (benchmark peers), stunnel4 and openssl (a TLS front for
# the TLS tests), a C compiler (the TCP_NODELAY shim), binutils and lintian (the package),
# and the Garage S3 server at the pinned version (built once with cargo, then reused).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/versions.sh
. "$here/scripts/versions.sh"

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

# `--demo`: only what scripts/demo.sh needs.
packages=(fuse3 gcc libc6-dev pkg-config procps)
[ "${1:-}" = "--demo" ] || packages+=(s3fs rclone stunnel4 openssl binutils lintian)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" > /dev/null
fi

if ! command -v cargo > /dev/null; then
    echo "install-deps: cargo not found; install Rust with rustup (https://rustup.rs) and run again" >&2
    exit 1
fi

if ! "$GARAGE_BIN" --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION"; then
    echo "install-deps: building Garage $GARAGE_VERSION into $PAILFS_TOOLS (once; about 20 minutes on 2 cores, cargo lists each crate)"
    cargo install garage --version "$GARAGE_VERSION" --locked \
        --no-default-features --features bundled-libs,lmdb \
        --root "$PAILFS_TOOLS/garage-$GARAGE_VERSION"
fi

if [ ! -c /dev/fuse ]; then
    echo "install-deps: /dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE is available" >&2
    exit 1
fi
echo "install-deps: ready (garage $GARAGE_VERSION at $GARAGE_BIN)"
