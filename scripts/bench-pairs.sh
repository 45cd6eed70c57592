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

# shellcheck source=scripts/bench-setup.sh
. scripts/bench-setup.sh pairs
B=pairs
bytes=$((size_mib << 20))
$tool mb $B > /dev/null
head -c "$bytes" /dev/urandom > "$work/src.bin"
# One object per round: each read is cold (the data cache would serve a second read).
if [ "$what" = read ]; then
    for round in $(seq 1 "$rounds"); do $tool put $B "big-$round.bin" "$bytes" "$round" > /dev/null; done
fi

"$pailfs" mount "s3://$B" "$mnt" --endpoint-url "$PAILFS_S3_ENDPOINT" --foreground \
    --log-file "$work/pailfs.log" "$@" > /dev/null 2>&1 &
mount_pid=$!
wait_mounted

cpu() { awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat"; }
cpu_before=$(cpu "$mount_pid")
for round in $(seq 1 "$rounds"); do
    if [ "$what" = write ]; then
        raw=$($tool put-parallel $B raw.bin "$work/src.bin" $((8 << 20)) 4 | field secs)
        t=$(now)
        dd if="$work/src.bin" of="$mnt/p-$round.bin" bs=1M conv=fsync status=none
    else
        raw=$($tool get-parallel $B "big-$round.bin" $((8 << 20)) 8 | field secs)
        # Drop the kernel's cached pages of the mount so that pailfs really reads.
        sync && echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
        t=$(now)
        dd if="$mnt/big-$round.bin" of=/dev/null bs=1M status=none
    fi
    p=$(since "$t")
    awk -v r="$raw" -v p="$p" -v n="$round" -v w="$what" \
        'BEGIN { printf "%s %d: raw %.3f s, pailfs %.3f s, pailfs/raw throughput %.2f\n", w, n, r, p, r / p }'
    [ "$what" = write ] && rm -f "$mnt/p-$round.bin"
done
awk -v c0="$cpu_before" -v c1="$(cpu "$mount_pid")" -v n="$rounds" -v m="$size_mib" \
    'BEGIN { printf "pailfs CPU: %.2f s per GiB\n", (c1 - c0) / (n * m / 1024) }'
awk '/VmHWM/ { printf "pailfs peak RSS: %.0f MiB\n", $2 / 1024 }' "/proc/$mount_pid/status"
