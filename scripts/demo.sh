#!/usr/bin/env bash
# The main job on an embedded default: start a local Garage with a demo bucket of sample files
# and mount it with pailfs.
#
#   scripts/demo.sh         start (prints where to look)
#   scripts/demo.sh stop    unmount and stop the demo Garage
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
demo="${PAILFS_DEMO_DIR:-/tmp/pailfs-demo}"
mnt="$demo/mnt"

if [ "${1:-}" = "stop" ]; then
    fusermount3 -u "$mnt" 2>/dev/null || true
    scripts/garage.sh stop "$demo/garage"
    echo "demo stopped. The next scripts/demo.sh starts a fresh server with fresh sample files (the old ones in $demo/garage are replaced); rm -rf $demo removes them now."
    exit 0
fi

# Only what the demo needs (not the benchmark peers or the TLS front the tests use). The first
# run builds Garage and pailfs: cargo prints each crate it compiles, so the screen keeps moving.
scripts/install-deps.sh --demo
echo "demo: building pailfs (the first time takes 10-20 minutes on 2 cores)"
cargo build --release --bin pailfs --example s3tool
tool=target/release/examples/s3tool
if grep -q " $mnt " /proc/self/mountinfo; then
    echo "the demo is already mounted on $mnt (scripts/demo.sh stop to end it)"
    exit 0
fi
mkdir -p "$mnt"
if [ -f "$demo/garage/garage.pid" ] && kill -0 "$(cat "$demo/garage/garage.pid")" 2>/dev/null; then
    :
else
    rm -rf "$demo/garage"
    scripts/garage.sh start "$demo/garage"
fi
# shellcheck disable=SC1091
. "$demo/garage/env"
$tool mb demo
$tool put-file demo README.md README.md
$tool put-file demo docs/LICENSE.txt LICENSE
$tool put demo media/sample-64MiB.bin $((64 << 20)) 1
$tool put-many demo photos/2024/img- 200 65536 > /dev/null
target/release/pailfs mount s3://demo "$mnt" --endpoint-url "$PAILFS_S3_ENDPOINT" --region garage
cat <<MSG

pailfs demo is up.
  Look:  ls -l $mnt   (README.md, docs/, media/, photos/2024/ with 200 files)
  Read:  cat $mnt/docs/LICENSE.txt | head; dd if=$mnt/media/sample-64MiB.bin of=/dev/null bs=1M
  Stop:  scripts/demo.sh stop
The server is Garage on $PAILFS_S3_ENDPOINT (credentials in $demo/garage/env).
MSG
