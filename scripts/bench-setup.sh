# Sourced by the benchmarks (bench.sh, bench-pairs.sh): builds pailfs and the raw client,
# makes a work directory with a mountpoint, starts a local Garage for this run (its S3
# endpoint and key land in the environment), and removes it all on exit. Also the helpers
# both use. Set $mount_pid to a foreground mount's pid so that cleanup waits for it.
#
#   . scripts/bench-setup.sh NAME      work directory /tmp/pailfs-NAME.XXXXXX
scripts/install-deps.sh > /dev/null
cargo build --release --quiet --bin pailfs --example s3tool
tool=target/release/examples/s3tool
pailfs=${PAILFS_BIN:-target/release/pailfs}

work=$(mktemp -d "/tmp/pailfs-$1.XXXXXX")
mnt="$work/mnt"
mkdir -p "$mnt"
# pailfs's default log, cache and run folders go below the work directory, not /var.
export PAILFS_DIRS="$work/pailfs-dirs"
mount_pid=""
cleanup() {
    fusermount3 -u "$mnt" 2>/dev/null || true
    if [ -n "$mount_pid" ]; then wait "$mount_pid" 2>/dev/null || true; fi
    scripts/garage.sh stop "$work/garage" || true
    rm -rf "$work"
}
trap cleanup EXIT
scripts/garage.sh start "$work/garage" --watch-pid $$
# shellcheck disable=SC1091
. "$work/garage/env"

# One field of `pailfs status --json MOUNTPOINT`.
status_field() { "$pailfs" status --json "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"; }
# The number after `NAME=` in the raw client's output.
field() { sed -n "s/.*\<$1=\([0-9.]*\).*/\1/p"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
wait_mounted() {
    for _ in $(seq 1 200); do
        grep -q " $mnt " /proc/self/mountinfo && return 0
        sleep 0.05
    done
    echo "mount did not appear" >&2; return 1
}
