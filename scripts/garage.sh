#!/usr/bin/env bash
# Start a single-node Garage S3 server on 127.0.0.1 in DIR, for tests, the demo and the benchmark.
#
#   scripts/garage.sh start DIR [--watch-pid PID]   start; write DIR/env (shell exports)
#   scripts/garage.sh stop DIR                      stop the server started in DIR
#
# DIR/env defines PAILFS_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
# GARAGE_PID. The key may create buckets. With --watch-pid, Garage is stopped (and DIR removed)
# when PID exits, however it ends: test runs use this.
# Garage runs with tools/nodelay.c preloaded (TCP_NODELAY on accepted sockets): without it,
# every small response on a keep-alive connection stalls ~40 ms on delayed ACKs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/versions.sh
. "$here/scripts/versions.sh"

# Ports are drawn below the kernel's ephemeral range: a port inside it can be the local end of
# some outgoing connection (the last test binary's, say), which a connect probe does not see but
# which makes the server's bind fail.
port_range() {
    local low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    if [ "$low" -gt 12000 ]; then echo "10000-$((low - 1))"; else echo "20000-60999"; fi
}

free_port() {
    local p taken=" ${1:-} "
    for p in $(shuf -i "$(port_range)" -n 64); do
        case "$taken" in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    echo "no free port found" >&2; return 1
}

nodelay_lib() {
    local out="$PAILFS_TOOLS/nodelay.so"
    if [ ! -f "$out" ] || [ "$here/tools/nodelay.c" -nt "$out" ]; then
        mkdir -p "$PAILFS_TOOLS"
        cc -shared -fPIC -O2 -o "$out" "$here/tools/nodelay.c" -ldl
    fi
    echo "$out"
}

# One attempt with fresh ports; returns 1 (server stopped, log printed) if Garage does not come up.
start_once() {
    local dir="$1" watch="$2"
    rm -rf "$dir/meta" "$dir/data"
    mkdir -p "$dir/meta" "$dir/data"
    local rpc s3 admin
    rpc=$(free_port) && s3=$(free_port "$rpc") && admin=$(free_port "$rpc $s3") || return 1
    cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
    LD_PRELOAD="$(nodelay_lib)" RUST_LOG=warn setsid "$GARAGE_BIN" -c "$dir/garage.toml" server \
        > "$dir/garage.log" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid" > "$dir/garage.pid"
    local g=("$GARAGE_BIN" -c "$dir/garage.toml") node="" i ok=""
    for i in $(seq 1 100); do
        node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$node" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    # `node id` answers from local files, possibly before the server listens for RPC: the
    # first command that needs the server retries until it does.
    if [ -n "$node" ]; then
        for i in $(seq 1 100); do
            if "${g[@]}" layout assign -z dc1 -c 10G "$node" > /dev/null 2>&1; then ok=1; break; fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if [ -n "$ok" ] && "${g[@]}" layout apply --version 1 > /dev/null; then
        # Garage answers S3 once the layout is live; wait for that.
        ok=""
        for i in $(seq 1 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$s3") 2>/dev/null; then ok=1; break; fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if [ -z "$ok" ]; then
        echo "garage did not come up on 127.0.0.1:$s3 (rpc $rpc, admin $admin); its log:" >&2
        cat "$dir/garage.log" >&2
        stop "$dir"
        return 1
    fi
    local key_id="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    local secret
    secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    "${g[@]}" key import --yes -n pailfs-test "$key_id" "$secret" > /dev/null
    "${g[@]}" key allow --create-bucket pailfs-test > /dev/null
    (umask 077; cat > "$dir/env" <<ENV
export PAILFS_S3_ENDPOINT=http://127.0.0.1:$s3
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=garage
export GARAGE_PID=$pid
export GARAGE_CONFIG=$dir/garage.toml
ENV
    )
    if [ -n "$watch" ]; then
        # Stop Garage when its owner (a test run) goes away, however it ends.
        (while kill -0 "$watch" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
         kill "$pid" 2>/dev/null || true; sleep 1; rm -rf "$dir") > /dev/null 2>&1 < /dev/null &
    fi
}

start() {
    local dir="$1" watch="${2:-}" attempt
    [ -x "$GARAGE_BIN" ] || { echo "garage $GARAGE_VERSION is not installed at $GARAGE_BIN; run scripts/install-deps.sh" >&2; exit 1; }
    for attempt in 1 2 3; do
        start_once "$dir" "$watch" && return 0
        echo "garage start attempt $attempt failed; trying again with other ports" >&2
    done
    exit 1
}

stop() {
    local dir="$1" pid i
    if [ -f "$dir/garage.pid" ]; then
        pid="$(cat "$dir/garage.pid")"
        kill "$pid" 2>/dev/null || true
        # Garage drains gracefully after SIGTERM, waiting on idle keep-alive connections;
        # return only once it no longer answers, forcing it after 3 s.
        for i in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/garage.pid"
    fi
}

case "${1:-}" in
    start) [ $# -ge 2 ] || { echo "usage: $0 start DIR [--watch-pid PID]" >&2; exit 2; }
           start "$2" "${4:-}" ;;
    stop) [ $# -ge 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
          stop "$2" ;;
    *) echo "usage: $0 start DIR [--watch-pid PID] | stop DIR" >&2; exit 2 ;;
esac
