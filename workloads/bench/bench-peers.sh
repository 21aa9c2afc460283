#!/usr/bin/env bash
# `make bench-peers`: quorumkv, etcd and Redis side by side on this machine, driven by the same
# YCSB driver (quorumkv-ycsb) in one run, so their figures compare. Installs what is missing
# (etcd-server, redis-server, protobuf-compiler from Debian), builds release, then for each
# store: starts it on loopback with its data under $BENCH_DIR (the same disk for all), loads
# the records, runs each workload at each client count, stops it. Writes target/bench/
# results.md (tables, quorumkv/etcd ratios), throughput-*.svg and latency-*.svg.
#
# Stores (modes): quorumkv, 3 nodes (linearizable reads); etcd, 3 members (linearizable and
# serializable reads, on the same cluster); Redis, one server, fresh for each fsync policy
# (appendfsync always, then everysec).
#
# Knobs (environment): BENCH_SHORT=1 (~2 minutes: workloads A-C, short runs, 1,000 records);
# BENCH_WORKLOADS="a b c d e f", BENCH_CLIENTS="1 16 64", BENCH_STORES="quorumkv etcd redis",
# BENCH_DURATION_S, BENCH_WARMUP_S, BENCH_RECORDS, BENCH_VALUE_BYTES, BENCH_DIR, BENCH_OUT,
# BENCH_BUILD=0 (use the release binaries as they are),
# BENCH_SERVER_MAX_S (every server is started under `timeout`: it stops by itself after this
# long even if this script is killed with SIGKILL), BENCH_*_PORT bases (loopback only).
# Everything this script starts is stopped on exit, error or Ctrl-C (trap).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

SHORT=${BENCH_SHORT:-0}
if [ "$SHORT" = 1 ]; then
  WORKLOADS=${BENCH_WORKLOADS:-a b c}
  DURATION_S=${BENCH_DURATION_S:-2}
  WARMUP_S=${BENCH_WARMUP_S:-0.5}
  RECORDS=${BENCH_RECORDS:-1000}
  SERVER_MAX_S=${BENCH_SERVER_MAX_S:-900}
else
  WORKLOADS=${BENCH_WORKLOADS:-a b c d e f}
  DURATION_S=${BENCH_DURATION_S:-10}
  WARMUP_S=${BENCH_WARMUP_S:-2}
  RECORDS=${BENCH_RECORDS:-10000}
  SERVER_MAX_S=${BENCH_SERVER_MAX_S:-3600}
fi
CLIENTS=${BENCH_CLIENTS:-1 16 64}
STORES=${BENCH_STORES:-quorumkv etcd redis}
VALUE_BYTES=${BENCH_VALUE_BYTES:-256}
OUT=${BENCH_OUT:-$ROOT/target/bench}
BENCH_DIR=${BENCH_DIR:-$OUT/data}
QUORUMKV_BASE_PORT=${BENCH_QUORUMKV_BASE_PORT:-17400}
ETCD_PORT=${BENCH_ETCD_PORT:-23790}
REDIS_PORT=${BENCH_REDIS_PORT:-16390}
LOADERS=16

QUORUMKV=$ROOT/target/release/quorumkv
YCSB=$ROOT/target/release/quorumkv-ycsb
RESULTS=$OUT/results.jsonl
LOGS=$OUT/logs

log() { printf '[bench-peers %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
. "$ROOT/workloads/bench/apt.sh"

# --- what this script started, stopped on every exit ------------------------------------------
# Each server runs under `timeout`, which puts itself and everything below it (quorumkv
# local's nodes too) into its own process group: signals go to the whole group.
PIDS=()
stop_started() {
  local pid alive=()
  for pid in "${PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null && alive+=("$pid")
  done
  for _ in $(seq 100); do
    local left=0
    for pid in "${alive[@]}"; do kill -0 -- "-$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${alive[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  # quorumkv local's nodes, should local itself have been killed before it could stop them.
  if [ -f "$LOGS/quorumkv-local.out" ]; then
    for pid in $(sed -n 's/.* pid \([0-9][0-9]*\) .*/\1/p' "$LOGS/quorumkv-local.out"); do
      kill -KILL "$pid" 2>/dev/null || true
    done
  fi
  PIDS=()
}
trap stop_started EXIT
trap 'log "interrupted"; exit 130' INT TERM

# --- install and build -------------------------------------------------------------------------
install_missing() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  command -v timeout >/dev/null || missing+=(coreutils)
  apt_install "${missing[@]}"
}

# Every server runs under `timeout`: it stops by itself after SERVER_MAX_S.
start() {
  local name=$1; shift
  timeout -k 5 "$SERVER_MAX_S" "$@" >"$LOGS/$name.out" 2>&1 &
  PIDS+=($!)
  disown $!
}

ycsb() { "$YCSB" "$@"; }

# The store arguments for quorumkv-ycsb.
wait_and_load() {
  ycsb wait "$@" --timeout-s 60
  ycsb load "$@" --records "$RECORDS" --value-bytes "$VALUE_BYTES" --clients "$LOADERS"
}

run_workloads() {
  # $@: one or more "|"-separated store argument sets, each run at every (workload, clients).
  local w c args
  for w in $WORKLOADS; do
    for c in $CLIENTS; do
      for args in "$@"; do
        # shellcheck disable=SC2086
        ycsb run ${args//|/ } --records "$RECORDS" --value-bytes "$VALUE_BYTES" \
          --workload "$w" --clients "$c" --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" \
          --out "$RESULTS" || log "run failed: ${args//|/ } workload $w clients $c (kept going)"
      done
    done
  done
}

bench_quorumkv() {
  local dir=$BENCH_DIR/quorumkv base=$QUORUMKV_BASE_PORT
  rm -rf "$dir"
  log "quorumkv: 3 nodes, client ports $((base + 1))-$((base + 3)), data $dir"
  start quorumkv-local "$QUORUMKV" local --nodes 3 --dir "$dir" --base-port "$base"
  local endpoints="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
  wait_and_load --store quorumkv --endpoints "$endpoints"
  run_workloads "--store|quorumkv|--endpoints|$endpoints"
  stop_started
}

bench_etcd() {
  local dir=$BENCH_DIR/etcd i cluster="" endpoints=""
  rm -rf "$dir"
  mkdir -p "$dir"
  for i in 1 2 3; do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:$((ETCD_PORT + 100 + i))"
    endpoints+="${endpoints:+,}127.0.0.1:$((ETCD_PORT + i))"
  done
  log "etcd: 3 members, client ports $((ETCD_PORT + 1))-$((ETCD_PORT + 3)), data $dir"
  for i in 1 2 3; do
    start "etcd-$i" etcd --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "http://127.0.0.1:$((ETCD_PORT + i))" \
      --advertise-client-urls "http://127.0.0.1:$((ETCD_PORT + i))" \
      --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 100 + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 100 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token quorumkv-bench --logger zap --log-level error
  done
  wait_and_load --store etcd --endpoints "$endpoints"
  run_workloads "--store|etcd|--endpoints|$endpoints|--etcd-reads|linearizable" \
    "--store|etcd|--endpoints|$endpoints|--etcd-reads|serializable"
  stop_started
}

bench_redis() {
  local fsync dir
  for fsync in always everysec; do
    dir=$BENCH_DIR/redis-$fsync
    rm -rf "$dir"
    mkdir -p "$dir"
    log "redis: appendfsync $fsync, port $REDIS_PORT, data $dir"
    start "redis-$fsync" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir" \
      --appendonly yes --appendfsync "$fsync" --save "" --daemonize no
    wait_and_load --store redis --endpoints "127.0.0.1:$REDIS_PORT"
    run_workloads "--store|redis|--endpoints|127.0.0.1:$REDIS_PORT"
    stop_started
  done
}

preamble() {
  local cpu mem fs
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
  fs=$(df -PT "$BENCH_DIR" | awk 'NR == 2 {print $2 " on " $1}')
  cat <<EOF
# quorumkv, etcd and Redis: YCSB core workloads, one run

Generated by \`$COMMAND\` on $(date -u +'%Y-%m-%d %H:%M UTC') (quorumkv commit
$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ', with uncommitted changes')).

- machine: $(nproc) cores ($cpu), $mem, $(uname -sr); load average before the run: $LOAD_BEFORE
- data of every store on the same disk: $BENCH_DIR ($fs)
- versions: $(etcd --version 2>/dev/null | head -1); $(redis-server --version | cut -d' ' -f1-3); $(rustc --version)
- quorumkv: 3 nodes (\`quorumkv local --nodes 3\`, default config: 16 shards, 3 replicas each, fsync on every Raft append), linearizable reads (ReadIndex)
- etcd: 3 members, default config (fsync on), reads linearizable (default) or serializable (any member, may be stale)
- Redis: one server, AOF on, \`appendfsync always\` (fsync before every reply) or \`everysec\` (a crash loses up to ~1 s of acknowledged writes); no replication
- driver: \`quorumkv-ycsb\`, Rust, one connection and one request in flight per client (closed loop), $RECORDS records of $VALUE_BYTES bytes, keys chosen by YCSB's scrambled zipfian (D: latest), ${WARMUP_S} s warm-up then ${DURATION_S} s measured per row; latencies in HdrHistogram
- clients: $CLIENTS; workloads: $WORKLOADS (upper case in the tables)
EOF
}

main() {
  COMMAND="${BENCH_COMMAND:-$( [ "$SHORT" = 1 ] && echo 'BENCH_SHORT=1 make bench-peers' || echo 'make bench-peers')}"
  LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  install_missing
  if [ "${BENCH_BUILD:-1}" = 1 ]; then
    log "building release binaries"
    cargo build --release -p node --bin quorumkv
    cargo build --release -p workloads --features etcd --bin quorumkv-ycsb
  fi
  mkdir -p "$OUT" "$LOGS" "$BENCH_DIR"
  : >"$RESULTS"
  local started=$SECONDS store
  for store in $STORES; do
    case $store in
      quorumkv) bench_quorumkv ;;
      etcd) bench_etcd ;;
      redis) bench_redis ;;
      *) log "unknown store $store (quorumkv, etcd, redis)"; exit 2 ;;
    esac
  done
  preamble >"$OUT/preamble.md"
  ycsb report --results "$RESULTS" --out-dir "$OUT" --preamble "$OUT/preamble.md"
  rm -rf "$BENCH_DIR"
  log "done in $((SECONDS - started)) s: $OUT/results.md"
}

main "$@"
