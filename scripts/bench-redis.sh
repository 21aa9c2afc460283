#!/usr/bin/env bash
# redis-benchmark against `quorumkv local --nodes 3` (release build, replicated, fsync on) and,
# in the same run on the same machine, against a single Redis 7 (Debian redis-server) with
# appendfsync always and with appendfsync everysec (data on the same disk, loopback).
#
#   scripts/bench-redis.sh [REQUESTS]        (default 200000; needs redis-server, redis-tools)
#
# Prints one line per (target, pipeline, test): requests per second and p50 latency.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${1:-200000}"
CLIENTS=50
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y redis-server redis-tools" >&2; exit 2; }
done
cargo build --release -p node --bin quorumkv >/dev/null
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench-redis.XXXXXX")"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 300); do redis-cli -p "$1" PING >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "port $1 never answered" >&2; exit 1; }

run_bench() { # label port
    for pipeline in 1 16; do
        redis-benchmark -p "$2" -t set,get -c "$CLIENTS" -n "$REQUESTS" -P "$pipeline" -q 2>/dev/null \
            | tr '\r' '\n' | grep -E '^(SET|GET): [0-9.]+ requests per second' \
            | sed "s/^/$1 -P $pipeline  /"
    done
}

echo "redis-benchmark -t set,get -c $CLIENTS -n $REQUESTS (-P 1 and -P 16); $(nproc) cores; $(date -u +%FT%TZ)"

./target/release/quorumkv local --nodes 3 --dir "$WORK/quorumkv" >"$WORK/local.out" 2>&1 &
PIDS+=($!)
wait_port 7601
until redis-cli -p 7601 SET warmup 1 2>/dev/null | grep -q OK; do sleep 0.2; done
run_bench "quorumkv 3 nodes (fsync on, via node 1)" 7601
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true

for fsync in always everysec; do
    mkdir -p "$WORK/redis-$fsync"
    redis-server --port 6390 --bind 127.0.0.1 --dir "$WORK/redis-$fsync" --appendonly yes \
        --appendfsync "$fsync" --save '' --daemonize no >"$WORK/redis-$fsync.log" 2>&1 &
    pid=$!
    PIDS+=($pid)
    wait_port 6390
    run_bench "redis 7 single node appendfsync $fsync" 6390
    kill "$pid"; wait "$pid" 2>/dev/null || true
done
