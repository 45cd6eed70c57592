#!/usr/bin/env bash
# Builds the Debian package from a pailfs binary, with dpkg-deb (no extra tools):
#   scripts/package-deb.sh [BINARY] [OUTDIR]     default: target/release/pailfs, target/debian
# Installs: /usr/bin/pailfs (stripped); /usr/sbin/mount.fuse.pailfs and mount.pailfs (mount(8)'s
# helpers); /lib/systemd/system/pailfs@.service; man pages; bash/zsh/fish completions; example
# units; copyright and changelog. The debug symbols are split out beside the package as
# OUTDIR/pailfs_VERSION_ARCH.debug (the binary names it in .gnu_debuglink; put it in
# /usr/lib/debug/usr/bin/pailfs.debug for gdb and backtraces with line numbers).
# The same layout is in Cargo.toml's [package.metadata.deb] for cargo-deb users.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/pailfs}
out=${2:-target/debian}
[ -x "$bin" ] || { echo "package-deb: no executable at $bin (cargo build --release first)" >&2; exit 2; }
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
maintainer="pailfs developers <developers@pailfs.org>"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
mkdir -p "$out"
debug="$out/pailfs_${version}_${arch}.debug"

install -D -m 0755 "$bin" "$root/usr/bin/pailfs"
objcopy --only-keep-debug "$bin" "$debug"
chmod 0644 "$debug"
strip --strip-unneeded "$root/usr/bin/pailfs"
(cd "$out" && objcopy --add-gnu-debuglink="$(basename "$debug")" "$root/usr/bin/pailfs")
mkdir -p "$root/usr/sbin"
ln -s ../bin/pailfs "$root/usr/sbin/mount.fuse.pailfs"
ln -s ../bin/pailfs "$root/usr/sbin/mount.pailfs"
install -D -m 0644 systemd/pailfs@.service "$root/lib/systemd/system/pailfs@.service"
for f in systemd/mnt-data.mount systemd/mnt-data.automount README.md LICENSE; do
    install -D -m 0644 "$f" "$root/usr/share/doc/pailfs/$(basename "$f")"
done
# Debian's machine-readable copyright; the license text itself is Debian's common one.
license=$(sed -n 's/^license *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
year=$(git log -1 --format=%ad --date=format:%Y 2>/dev/null || date +%Y)
cat > "$root/usr/share/doc/pailfs/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pailfs

Files: *
Copyright: $year pailfs developers
License: $license
 On Debian systems, the full text of the $license license can be found in
 /usr/share/common-licenses/$license.
COPYRIGHT
chmod 0644 "$root/usr/share/doc/pailfs/copyright"
# The changelog: this version, dated by the last commit (the package is reproducible).
when=$(git log -1 --format=%aD 2>/dev/null || date -R)
# (A native package: its version has no Debian revision, so the file is changelog.gz.)
printf 'pailfs (%s) unstable; urgency=medium\n\n  * Release %s; see README.md for what it does.\n\n -- %s  %s\n' \
    "$version" "$version" "$maintainer" "$when" | gzip -9n > "$root/usr/share/doc/pailfs/changelog.gz"
chmod 0644 "$root/usr/share/doc/pailfs/changelog.gz"
"$bin" generate --man "$root/usr/share/man/man1" --completions "$root/completions"
install -D -m 0644 man/mount.fuse.pailfs.8 "$root/usr/share/man/man8/mount.fuse.pailfs.8"
install -D -m 0644 man/mount.pailfs.8 "$root/usr/share/man/man8/mount.pailfs.8"
gzip -9n "$root"/usr/share/man/man1/*.1 "$root"/usr/share/man/man8/*.8
install -D -m 0644 "$root/completions/pailfs.bash" "$root/usr/share/bash-completion/completions/pailfs"
install -D -m 0644 "$root/completions/_pailfs" "$root/usr/share/zsh/vendor-completions/_pailfs"
install -D -m 0644 "$root/completions/pailfs.fish" "$root/usr/share/fish/vendor_completions.d/pailfs.fish"
rm -r "$root/completions"

# The newest glibc symbol version the binary needs.
glibc=$(objdump -T "$root/usr/bin/pailfs" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: pailfs
Version: $version
Architecture: $arch
Maintainer: $maintainer
Depends: fuse3, libc6 (>= $glibc)
Section: utils
Priority: optional
Homepage: https://example.invalid/pailfs
Description: mount an S3-compatible bucket as a local folder
 pailfs is a FUSE filesystem for S3-compatible object stores (AWS S3, MinIO,
 Garage, Ceph RGW, Backblaze B2, Scaleway, Wasabi, ...): streamed reads,
 uploads that finish before close() returns, s3fs-compatible metadata,
 fstab and systemd integration.
CONTROL

deb="$out/pailfs_${version}_${arch}.deb"
# Fast compression: the package is rebuilt by every test run.
dpkg-deb --root-owner-group -Zgzip -z1 --build "$root" "$deb" >/dev/null
echo "$deb"
