#!/usr/bin/env bash
# Paired benchmark: the raw SDK client and pailfs take turns on one local Garage, N rounds, so
# that the machine's drift (large on small VMs: ±30 % between minutes) hits both sides of each
# pair alike. Prints each pair's ratio, then pailfs's CPU seconds per GiB and its peak RSS.
# scripts/bench.sh gives the full table against s3fs and rclone; use this one to judge a
# change to one path.
#
#   scripts/bench-pairs.sh [write|read] [ROUNDS] [SIZE_MIB] [-- pailfs mount flags...]
#   e.g. scripts/bench-pairs.sh write 4 1024 -- --max-upload-concurrency 8
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:-write}
rounds=${2:-3}
size_mib=${3:-1024}
shift $(($# < 3 ? $# : 3))
[ "${1:-}" = "--" ] && shift
case $what in write | read) ;; *) echo "usage: $0 [write|read] [ROUNDS] [SIZE_MIB] [-- flags]" >&2; exit 2 ;; esac

scripts/install-deps.sh > /dev/null
cargo build --release --quiet --bin pailfs --example s3tool
tool=target/release/examples/s3tool
pailfs=target/release/pailfs

work=$(mktemp -d /tmp/pailfs-pairs.XXXXXX)
mnt="$work/mnt"
mkdir -p "$mnt"
pid=""
cleanup() {
    fusermount3 -u "$mnt" 2>/dev/null || true
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    scripts/garage.sh stop "$work/garage" || true
    rm -rf "$work"
}
trap cleanup EXIT
scripts/garage.sh start "$work/garage" --watch-pid $$
# shellcheck disable=SC1091
. "$work/garage/env"
B=pairs
bytes=$((size_mib << 20))
$tool mb $B > /dev/null
head -c "$bytes" /dev/urandom > "$work/src.bin"
[ "$what" = read ] && $tool put $B big.bin "$bytes" 3 > /dev/null

"$pailfs" mount "s3://$B" "$mnt" --endpoint-url "$PAILFS_S3_ENDPOINT" --foreground \
    --log-file "$work/pailfs.log" "$@" > /dev/null 2>&1 &
pid=$!
for _ in $(seq 1 200); do grep -q " $mnt " /proc/self/mountinfo && break; sleep 0.05; done

secs() { sed -n 's/.*secs=\([0-9.]*\).*/\1/p'; }
now() { date +%s.%N; }
cpu() { awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat"; }
cpu_before=$(cpu "$pid")
for round in $(seq 1 "$rounds"); do
    if [ "$what" = write ]; then
        raw=$($tool put-parallel $B raw.bin "$work/src.bin" $((8 << 20)) 4 | secs)
        t=$(now)
        dd if="$work/src.bin" of="$mnt/p-$round.bin" bs=1M conv=fsync status=none
    else
        raw=$($tool get-parallel $B big.bin $((8 << 20)) 8 | secs)
        # Drop the kernel's cached pages of the mount so that pailfs really reads.
        sync && echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
        t=$(now)
        dd if="$mnt/big.bin" of=/dev/null bs=1M status=none
    fi
    p=$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    awk -v r="$raw" -v p="$p" -v n="$round" -v w="$what" \
        'BEGIN { printf "%s %d: raw %.3f s, pailfs %.3f s, pailfs/raw throughput %.2f\n", w, n, r, p, r / p }'
    [ "$what" = write ] && rm -f "$mnt/p-$round.bin"
done
awk -v c0="$cpu_before" -v c1="$(cpu "$pid")" -v n="$rounds" -v m="$size_mib" \
    'BEGIN { printf "pailfs CPU: %.2f s per GiB\n", (c1 - c0) / (n * m / 1024) }'
awk '/VmHWM/ { printf "pailfs peak RSS: %.0f MiB\n", $2 / 1024 }' "/proc/$pid/status"
