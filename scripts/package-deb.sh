#!/usr/bin/env bash
# Builds the Debian package from a pailfs binary, with dpkg-deb (no extra tools):
#   scripts/package-deb.sh [BINARY] [OUTDIR]     default: target/release/pailfs, target/debian
# Installs: /usr/bin/pailfs; /usr/sbin/mount.fuse.pailfs (mount(8)'s helper for fuse.pailfs);
# /lib/systemd/system/pailfs@.service; man pages; bash/zsh/fish completions; example units.
# The same layout is in Cargo.toml's [package.metadata.deb] for cargo-deb users.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/pailfs}
out=${2:-target/debian}
[ -x "$bin" ] || { echo "package-deb: no executable at $bin (cargo build --release first)" >&2; exit 2; }
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

install -D -m 0755 "$bin" "$root/usr/bin/pailfs"
mkdir -p "$root/usr/sbin"
ln -s ../bin/pailfs "$root/usr/sbin/mount.fuse.pailfs"
install -D -m 0644 systemd/pailfs@.service "$root/lib/systemd/system/pailfs@.service"
for f in systemd/mnt-data.mount systemd/mnt-data.automount README.md LICENSE; do
    install -D -m 0644 "$f" "$root/usr/share/doc/pailfs/$(basename "$f")"
done
"$bin" generate --man "$root/usr/share/man/man1" --completions "$root/completions"
gzip -9n "$root"/usr/share/man/man1/*.1
install -D -m 0644 "$root/completions/pailfs.bash" "$root/usr/share/bash-completion/completions/pailfs"
install -D -m 0644 "$root/completions/_pailfs" "$root/usr/share/zsh/vendor-completions/_pailfs"
install -D -m 0644 "$root/completions/pailfs.fish" "$root/usr/share/fish/vendor_completions.d/pailfs.fish"
rm -r "$root/completions"

mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: pailfs
Version: $version
Architecture: $arch
Maintainer: pailfs developers <pailfs@localhost>
Depends: fuse3
Section: utils
Priority: optional
Homepage: https://example.invalid/pailfs
Description: mount an S3-compatible bucket as a local folder
 pailfs is a FUSE filesystem for S3-compatible object stores (AWS S3, MinIO,
 Garage, Ceph RGW, Backblaze B2, Scaleway, Wasabi, ...): streamed reads,
 uploads that finish before close() returns, s3fs-compatible metadata,
 fstab and systemd integration.
CONTROL

mkdir -p "$out"
deb="$out/pailfs_${version}_${arch}.deb"
# Fast compression: the package is rebuilt by every test run.
dpkg-deb --root-owner-group -Zgzip -z1 --build "$root" "$deb" >/dev/null
echo "$deb"
