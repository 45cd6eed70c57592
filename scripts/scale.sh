#!/usr/bin/env bash
# Scale check, not run in CI: a flat folder of FLAT objects (1,000,000 by default) and a tree
# of DIRS folders x PER objects (1,000 x 1,000), on a local Garage. Prints, for each, how long
# `ls -f` takes to show its first entry, and `ls -l`, `find` and `du -s` against the raw SDK
# listing of the same prefix, and the mount's peak RSS. Seeding 2,000,000 objects takes a
# while (about 15-30 minutes on 2 cores).
#
#   scripts/scale.sh [FLAT] [DIRS] [PER] [-- pailfs mount flags...]
#
# With PAILFS_SCALE_SERVER=DIR, the Garage started by `scripts/garage.sh start DIR` is used
# instead of a fresh one, and seeding is skipped when its bucket `scale` already holds the
# objects (seed once, measure many times while tuning).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
flat=${1:-1000000}
dirs=${2:-1000}
per=${3:-1000}
shift $(($# < 3 ? $# : 3))
[ "${1:-}" = "--" ] && shift
# shellcheck source=scripts/bench-setup.sh
. scripts/bench-setup.sh scale
B=scale
if [ -n "${PAILFS_SCALE_SERVER:-}" ]; then
    # shellcheck disable=SC1091
    . "$PAILFS_SCALE_SERVER/env"
fi
$tool mb $B > /dev/null
seeded() { [ "$($tool list $B "$1" | field ops)" = "$2" ]; }
if ! seeded flat/ "$flat" || ! seeded tree/ "$((dirs * per))"; then
    t=$(now)
    echo "seeding $flat objects in flat/ ..."
    $tool put-many $B flat/f "$flat" 10 > /dev/null
    echo "seeding $dirs folders x $per objects in tree/ ..."
    for d in $(seq -w 1 "$dirs"); do $tool put-many $B "tree/d$d/f" "$per" 10 > /dev/null; done
    echo "seeded in $(since "$t") s"
fi
raw_flat=$($tool list $B flat/ | field secs)
raw_tree=$($tool list $B tree/ | field secs)

mount_it() {
    "$pailfs" mount "s3://$B" "$mnt" --endpoint-url "$PAILFS_S3_ENDPOINT" --foreground \
        --log-file "$work/pailfs.log" "$@" > /dev/null 2>&1 &
    mount_pid=$!
    wait_mounted
}
# The daemon keeps a node per name the kernel holds (about 100 bytes), and the kernel holds
# every name a walk showed until memory pressure: each scenario gets a mount of its own, so
# each peak is that scenario's.
unmount_it() {
    echo "  peak RSS of the mount: $(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$mount_pid/status")"
    echo "  requests: LIST=$(status_field "$mnt" LIST) HEAD=$(status_field "$mnt" HEAD) GET=$(status_field "$mnt" GET)"
    fusermount3 -u "$mnt"
    wait "$mount_pid" || true
    mount_pid=""
}

timed() { # name raw command...
    local name=$1 raw=$2 t
    shift 2
    t=$(now)
    if timeout 3600 "$@" > /dev/null; then
        local took
        took=$(since "$t")
        printf '%-40s %9s s  raw listing %8s s  %6s x\n' "$name" "$took" "$raw" "$(ratio "$took" "$raw")"
    else
        printf '%-40s did not finish\n' "$name"
    fi
}
mount_it "$@"
timed "ls -f flat/, first entry" "$raw_flat" bash -c 'ls -f "$1" | head -1' - "$mnt/flat"
timed "ls -l flat/ ($flat objects)" "$raw_flat" ls -l "$mnt/flat"
timed "find flat/ -type f -size -1k" "$raw_flat" find "$mnt/flat" -type f -size -1k
timed "du -s flat/" "$raw_flat" du -s "$mnt/flat"
unmount_it
mount_it "$@"
timed "ls -lR tree/ ($dirs x $per)" "$raw_tree" ls -lR "$mnt/tree"
timed "find tree/ -type f -size -1k" "$raw_tree" find "$mnt/tree" -type f -size -1k
timed "du -s tree/" "$raw_tree" du -s "$mnt/tree"
unmount_it
