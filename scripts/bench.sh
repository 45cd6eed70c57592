#!/usr/bin/env bash
# Benchmark: pailfs against a raw S3 client of the same SDK (examples/s3tool.rs), s3fs and
# rclone (Debian packages), all on one local Garage started here. Garage runs with the
# TCP_NODELAY shim (tools/nodelay.c): without it every small response stalls ~40 ms on delayed
# ACKs and all clients look alike. Timing is judged here, never in tests.
#
#   scripts/bench.sh            full run (seeds a 1 GiB object, 5,000 + 500 small objects and a
#                               100,000-object folder; then writes 1 GiB, 200 small files and a
#                               source tree (tar x) through each mount)
#   BENCH_ONLY="pailfs" scripts/bench.sh   mount only some of: pailfs s3fs rclone
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/bench-setup.sh
. scripts/bench-setup.sh bench
B=bench

echo "seeding: 1 GiB object, 5,000 objects in ls5k/, 500 x 4 KiB in small/ ..."
$tool mb $B
$tool put $B big/1g.bin $((1 << 30)) 3
# Three more 1 GiB objects for the sequential row: the random reads before it bring big/1g.bin
# into pailfs's data cache, and a cold sequential read is what the row measures. The row is the
# median of three reads on each side: one read of a second or two on this kind of machine
# drifts by ±15 % from minute to minute, more than the margin the row judges.
for n in 1 2 3; do $tool put $B "big/seq-$n.bin" $((1 << 30)) $((4 + n)); done
$tool put $B big/300m.bin $((300 << 20)) 4
$tool put-many $B ls5k/f 5000 1024 > /dev/null
$tool put-many $B small/s 500 4096 > /dev/null
echo "seeding: 100,000 objects in d100k/ ..."
$tool put-many $B d100k/f 100000 100 > /dev/null
# A source tree to unpack: 24 folders in two levels, 600 small files.
mkdir -p "$work/tree"
for d in $(seq 1 12); do
    for s in a b; do
        mkdir -p "$work/tree/src/mod$d/$s"
        for f in $(seq 1 25); do head -c $((500 + f * 40)) /dev/urandom > "$work/tree/src/mod$d/$s/f$f.rs"; done
    done
done
tar cf "$work/tree.tar" -C "$work/tree" src

echo "raw SDK baseline ..."
declare -A R
# The middle one of three numbers.
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
# Before each timed cold read (raw and mounts alike): the page caches dropped, so every read
# starts from the same memory state. On a VM whose idle memory goes back to the host (free
# page reporting), what the steps before left in memory otherwise decided the row: a mount's
# page cache filling pages the host had taken back cost a host fault per page, up to 3 CPU-s
# per GiB, for pailfs and s3fs alike.
cold() { sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
R[seq]=$(median $(for n in 1 2 3; do cold; $tool get-parallel $B "big/seq-$n.bin" $((8 << 20)) 8 | field secs; done))
R[list]=$($tool list $B ls5k/ | field secs)
R[list100k]=$($tool list $B d100k/ | field secs)
R[small]=$($tool get-each $B small/ | field secs)
R[rand]=$($tool get-random $B big/1g.bin 4096 10 | field ops)
R[rand]=$(awk -v o="${R[rand]}" 'BEGIN { printf "%.0f", o / 10 }')
head -c $((1 << 30)) /dev/urandom > "$work/1g.src"
R[write]=$($tool put-parallel $B raw/1g.bin "$work/1g.src" $((8 << 20)) 4 | field secs)

declare -A T
# Mounts the bucket on $mnt with tool $1 (pailfs, s3fs or rclone), its log in $work/$2.log, and
# the rest as that tool's extra flags (for s3fs: one more -o list); sets the caller's $pid.
mount_tool() {
    local fs=$1 log="$work/$2.log"
    shift 2
    case $fs in
        pailfs)
            $pailfs mount "s3://$B" "$mnt" --endpoint-url "$PAILFS_S3_ENDPOINT" --foreground \
                --log-file "$log" "$@" & pid=$! ;;
        s3fs)
            printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > "$work/s3fs.passwd"
            chmod 600 "$work/s3fs.passwd"
            s3fs $B "$mnt" -f -o "url=$PAILFS_S3_ENDPOINT,use_path_request_style,endpoint=garage,passwd_file=$work/s3fs.passwd${1:+,$1}" \
                > "$log" 2>&1 & pid=$! ;;
        rclone)
            # rclone 1.60 cannot combine AWS_CA_BUNDLE with its HTTP transport; this is plain
            # HTTP on loopback, so it is not needed.
            env -u AWS_CA_BUNDLE RCLONE_S3_PROVIDER=Other RCLONE_S3_ENDPOINT="$PAILFS_S3_ENDPOINT" RCLONE_S3_REGION=garage \
            RCLONE_S3_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" RCLONE_S3_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
            RCLONE_S3_FORCE_PATH_STYLE=true \
                rclone mount ":s3:$B" "$mnt" "$@" > "$log" 2>&1 & pid=$! ;;
    esac
    wait_mounted
}

# Waits (at most 60 s) until process $1 uses no more CPU, and the kernel has written back the
# dirty pages: the background work of the row before is done.
settle() {
    local before after
    sync
    before=$(awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null) || return 0
    for _ in $(seq 1 120); do
        sleep 0.5
        after=$(awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null) || return 0
        [ $((after - before)) -le 1 ] && return 0
        before=$after
    done
}

run_fs() {
    local fs=$1 pid
    mount_tool "$fs" "$fs"
    local t ops
    # Random reads first, while no page cache holds the object.
    ops=$($tool pread-random "$mnt/big/1g.bin" 4096 10 | field ops)
    T[$fs,rand]=$(awk -v o="$ops" 'BEGIN { printf "%.0f", o / 10 }')
    # What the random reads started in the background (pailfs fills its data cache with the
    # whole object) must not run into the cold sequential read.
    settle "$pid"
    T[$fs,seq]=$(median $(for n in 1 2 3; do
        cold; t=$(now); dd if="$mnt/big/seq-$n.bin" of=/dev/null bs=1M status=none; since "$t"; echo
    done))
    t=$(now); ls -l "$mnt/ls5k" > /dev/null; T[$fs,lscold]=$(since "$t")
    t=$(now); ls -l "$mnt/ls5k" > /dev/null; T[$fs,lswarm]=$(since "$t")
    # A tree walk of a huge folder: list it, then stat every entry (du, find, backups).
    t=$(now); timeout 600 ls -l "$mnt/d100k" > /dev/null && T[$fs,ls100k]=$(since "$t")
    t=$(now); timeout 600 du -s "$mnt/d100k" > /dev/null && T[$fs,du100k]=$(since "$t")
    t=$(now); timeout 600 find "$mnt/d100k" -type f -size -1k > /dev/null && T[$fs,find100k]=$(since "$t")
    local gets0=0 heads0=0
    ls "$mnt/small" > /dev/null
    if [ "$fs" = pailfs ]; then gets0=$(status_field "$mnt" GET); heads0=$(status_field "$mnt" HEAD); fi
    t=$(now); cat "$mnt"/small/* > /dev/null; T[$fs,small]=$(since "$t")
    if [ "$fs" = pailfs ]; then
        local gets heads
        gets=$(( $(status_field "$mnt" GET) - gets0 ))
        heads=$(( $(status_field "$mnt" HEAD) - heads0 ))
        T[$fs,gets]=$(awk -v g="$gets" 'BEGIN { printf "%.2f", g / 500 }')
        T[$fs,relookups]=$heads
    fi
    mkdir -p "$mnt/w-$fs" 2>/dev/null || true
    t=$(now); dd if="$work/1g.src" of="$mnt/w-$fs-1g.bin" bs=1M conv=fsync status=none && T[$fs,write]=$(since "$t")
    t=$(now)
    local i ok=1
    for i in $(seq 1 200); do echo "$i" > "$mnt/w-$fs-small-$i.txt" || ok=0; done
    [ $ok = 1 ] && T[$fs,creates]=$(since "$t")
    mkdir -p "$mnt/tarx-$fs"
    t=$(now); timeout 600 tar xf "$work/tree.tar" --no-same-owner -C "$mnt/tarx-$fs" && T[$fs,tarx]=$(since "$t")
    T[$fs,rss]=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")
    fusermount3 -u "$mnt"
    wait "$pid" 2>/dev/null || true
}

for fs in ${BENCH_ONLY:-pailfs s3fs rclone}; do
    echo "mounting with $fs ..."
    run_fs "$fs"
done

# Unpacking a tree with write-back caching on: pailfs --write-back async against rclone
# --vfs-cache-mode writes (the time includes each mount's unmount, which waits for uploads).
tarx_cached() {
    local fs=$1 pid t
    case $fs in
        pailfs) mount_tool pailfs pailfs-async --write-back async ;;
        rclone) mount_tool rclone rclone-writes --vfs-cache-mode writes --cache-dir "$work/rclone-cache" ;;
        *) return ;;
    esac
    mkdir -p "$mnt/tarc-$fs"
    t=$(now)
    tar xf "$work/tree.tar" --no-same-owner -C "$mnt/tarc-$fs" && T[$fs,tarxc]=$(since "$t")
    fusermount3 -u "$mnt"
    wait "$pid" 2>/dev/null || true
    T[$fs,tarxcu]=$(since "$t")
}
for fs in ${BENCH_ONLY:-pailfs s3fs rclone}; do
    tarx_cached "$fs"
done

# Re-reads with each tool's local data cache on (pailfs by default, s3fs use_cache, rclone
# --vfs-cache-mode full): a 300 MiB file read, the mount remounted, the file read again.
mount_data_cached() {
    case $1 in
        pailfs) mount_tool pailfs pailfs-data --cache-dir "$work/pailfs-data" ;;
        s3fs) mount_tool s3fs s3fs-data "use_cache=$work/s3fs-data" ;;
        rclone) mount_tool rclone rclone-data --vfs-cache-mode full --cache-dir "$work/rclone-data" ;;
    esac
}
reread_cached() {
    local fs=$1 pid t gets0
    mount_data_cached "$fs"
    t=$(now); cat "$mnt/big/300m.bin" > /dev/null; T[$fs,reread1]=$(since "$t")
    sleep 2 # blocks still on their way to disk
    fusermount3 -u "$mnt"; wait "$pid" 2>/dev/null || true
    mount_data_cached "$fs"
    stat "$mnt/big/300m.bin" > /dev/null
    [ "$fs" = pailfs ] && gets0=$(status_field "$mnt" GET)
    t=$(now); cat "$mnt/big/300m.bin" > /dev/null; T[$fs,reread2]=$(since "$t")
    [ "$fs" = pailfs ] && T[pailfs,rereadgets]=$(( $(status_field "$mnt" GET) - gets0 ))
    fusermount3 -u "$mnt"; wait "$pid" 2>/dev/null || true
}
for fs in ${BENCH_ONLY:-pailfs s3fs rclone}; do
    reread_cached "$fs"
done
if [[ " ${BENCH_ONLY:-pailfs} " == *" pailfs "* ]]; then
    # 1 GiB read through a 256 MiB cap: what stays on disk.
    mount_tool pailfs pailfs-capped --cache-dir "$work/pailfs-capped" --max-cache-size 256MiB
    cat "$mnt/big/1g.bin" > /dev/null
    sleep 2
    T[pailfs,capdisk]=$(du -sm "$work/pailfs-capped/blocks" | cut -f1)
    fusermount3 -u "$mnt"; wait "$pid" 2>/dev/null || true
fi

cell() { echo "${T[$1,$2]:--}"; }
printf '\n%-38s %9s %9s %9s %9s %12s  %s\n' "test" "raw SDK" "pailfs" "s3fs" "rclone" "pailfs/raw" "target"
row() { # name key raw unit ratio-kind target
    local r
    case $5 in
        time) r=$(ratio "$3" "$(cell pailfs "$2")") ;;      # raw time / pailfs time: throughput share
        slower) r=$(ratio "$(cell pailfs "$2")" "$3") ;;    # pailfs time / raw time
        rate) r=$(ratio "$(cell pailfs "$2")" "$3") ;;
        *) r="-" ;;
    esac
    printf '%-38s %9s %9s %9s %9s %12s  %s\n' "$1" "$3" "$(cell pailfs "$2")" "$(cell s3fs "$2")" "$(cell rclone "$2")" "$r" "$6"
}
row "seq read 1 GiB cold, median of 3 (s)" seq "${R[seq]}" s time ">= 0.90 x raw throughput"
row "ls -l 5,000 objects, cold (s)" lscold "${R[list]}" s slower "<= 3 x raw listing time"
row "ls -l 5,000 objects, warm (s)" lswarm "${R[list]}" s slower ""
row "cat 500 x 4 KiB objects (s)" small "${R[small]}" s slower ""
row "4 KiB random reads for 10 s (ops/s)" rand "${R[rand]}" ops rate ""
row "write 1 GiB, dd conv=fsync (s)" write "${R[write]}" s time ">= 0.90 x raw multipart"
row "create 200 small files (s)" creates "-" s none ""
row "ls -l of 100,000 objects (s)" ls100k "${R[list100k]}" s slower "<= 2 x raw listing time"
row "du -s of 100,000 objects (s)" du100k "${R[list100k]}" s slower "<= 2 x raw listing time"
row "find -size of 100,000 objects (s)" find100k "${R[list100k]}" s slower "<= 2 x raw listing time"
row "tar x, 600 files in 24 folders (s)" tarx "-" s none ""
row "  same, write-back cache on (s)" tarxc "-" s none "pailfs async vs rclone --vfs-cache-mode writes"
row "  same, until uploaded + unmounted (s)" tarxcu "-" s none ""
row "read 300 MiB, data cache on (s)" reread1 "-" s none ""
row "  again after a remount (s)" reread2 "-" s none ">= 2 x faster than the first, <= 5 GETs"
row "peak RSS of the mount (MiB)" rss "-" MiB none "<= 128 MiB (pailfs)"
echo "pailfs re-read after a remount: $(cell pailfs rereadgets) GETs; 1 GiB read through --max-cache-size 256MiB left $(cell pailfs capdisk) MiB in the data cache (target <= 257)"
echo "pailfs GETs per small-file cat: $(cell pailfs gets) (target <= 1); HEADs of names looked up again"
echo "  during the run (pailfs trusts names for --metadata-ttl, 1 min): $(cell pailfs relookups)"
awk -v s="${R[seq]}" 'BEGIN { printf "raw 1 GiB parallel ranged GET: %.0f MiB/s\n", 1024 / s }'
