#!/usr/bin/env bash
# `make bench-storage`: the storage benchmarks of issue 11 against release binaries on loopback,
# driven by `quorumkv-ycsb write` (closed-loop writers of fresh keys, reported in rounds):
#
#   compare   quorumkv (`quorumkv local --nodes 3`, default config: 16 shards) and etcd
#             (3 members) in the same run: 64 writers and 1 writer of 256-byte values,
#             BENCH_COMPARE_REPEAT rounds in alternating order (each store fresh every round).
#   growth    a fresh quorumkv cluster, 64 writers of 1 KiB values to fresh keys until
#             BENCH_STORAGE_MIB MiB were acknowledged (each replica then holds that much):
#             per round puts/s, p99 and max latency, RSS of each node, bytes on disk per node.
#   restart   on the grown cluster: node 2 is stopped (SIGTERM) and started again; time until
#             its /health/ready answers 200 and until a read through it succeeds. Then the
#             same after SIGKILL.
#   transfer  on the grown cluster: 64 writers (256 B) run while node 4 joins; time until node 4
#             holds every replica placed on it as an up-to-date voter, and the writers' figures
#             during the transfer.
#
# Knobs (environment): BENCH_STORAGE_MIB (default 200; 2048 is the issue's full size),
# BENCH_SCENARIOS ("compare growth restart transfer"; restart and transfer need growth),
# BENCH_COMPARE_S (10), BENCH_COMPARE_REPEAT (5), BENCH_ROUND_S (10), BENCH_BUILD=0 (use the release binaries as they
# are), BENCH_QUORUMKV / BENCH_YCSB (other binaries, e.g. a copy of a build to compare;
# implies BENCH_BUILD=0), BENCH_OUT (target/bench), BENCH_BASE_PORT (20000: quorumkv uses BASE+1..BASE+304),
# BENCH_ETCD_PORT (20500: etcd uses +1..+3 and +101..+103), BENCH_SERVER_MAX_S (every server
# runs under `timeout` and stops by itself after this long, even if this script is killed).
# Results: $BENCH_OUT/storage.md and storage.jsonl. Everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

MIB=${BENCH_STORAGE_MIB:-200}
SCENARIOS=${BENCH_SCENARIOS:-compare growth restart transfer}
COMPARE_S=${BENCH_COMPARE_S:-10}
COMPARE_REPEAT=${BENCH_COMPARE_REPEAT:-5}
ROUND_S=${BENCH_ROUND_S:-10}
OUT=${BENCH_OUT:-$ROOT/target/bench}
DATA=${BENCH_DIR:-$OUT/storage-data}
BASE=${BENCH_BASE_PORT:-20000}
ETCD_PORT=${BENCH_ETCD_PORT:-20500}
SERVER_MAX_S=${BENCH_SERVER_MAX_S:-7200}
READY_MAX_S=${BENCH_READY_MAX_S:-300}
TRANSFER_MAX_S=${BENCH_TRANSFER_MAX_S:-1800}

QUORUMKV=${BENCH_QUORUMKV:-$ROOT/target/release/quorumkv}
YCSB=${BENCH_YCSB:-$ROOT/target/release/quorumkv-ycsb}
JSONL=$OUT/storage.jsonl
MD=$OUT/storage.md
LOGS=$OUT/storage-logs
QKV_ENDPOINTS="127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2)),127.0.0.1:$((BASE + 3))"

log() { printf '[bench-storage %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
. "$ROOT/workloads/bench/apt.sh"
load() { cut -d' ' -f1-3 /proc/loadavg; }
now_ms() { date +%s%3N; }

# --- what this script started, stopped on every exit ------------------------------------------
# Each server runs under `timeout`, which puts itself and its children into their own process
# group: signals go to the whole group. Node pids `local` printed are killed as well.
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
  if [ -f "$LOGS/quorumkv-local.out" ]; then
    for pid in $(sed -n 's/.* pid \([0-9][0-9]*\) .*/\1/p' "$LOGS/quorumkv-local.out"); do
      kill -KILL "$pid" 2>/dev/null || true
    done
  fi
  PIDS=()
}
trap stop_started EXIT
trap 'log "interrupted"; exit 130' INT TERM

start() {
  local name=$1; shift
  timeout -k 5 "$SERVER_MAX_S" "$@" >"$LOGS/$name.out" 2>&1 &
  PIDS+=($!)
  disown $!
}

# A JSON line of this script's own measurements.
record() { printf '%s\n' "$1" >>"$JSONL"; }

node_pid() { sed -n "s/.*node $1 .* pid \([0-9][0-9]*\) .*/\1/p" "$LOGS/quorumkv-local.out"; }

start_quorumkv() {
  rm -rf "$DATA/quorumkv"
  log "quorumkv: 3 nodes, client ports $((BASE + 1))-$((BASE + 3)), data $DATA/quorumkv"
  start quorumkv-local "$QUORUMKV" local --nodes 3 --dir "$DATA/quorumkv" --base-port "$BASE"
  "$YCSB" wait --store quorumkv --endpoints "$QKV_ENDPOINTS" --timeout-s 60 >/dev/null
}

start_etcd() {
  local dir=$DATA/etcd i cluster="" endpoints=""
  rm -rf "$dir"
  mkdir -p "$dir"
  for i in 1 2 3; do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:$((ETCD_PORT + 100 + i))"
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
  ETCD_ENDPOINTS="127.0.0.1:$((ETCD_PORT + 1)),127.0.0.1:$((ETCD_PORT + 2)),127.0.0.1:$((ETCD_PORT + 3))"
  "$YCSB" wait --store etcd --endpoints "$ETCD_ENDPOINTS" --timeout-s 60 >/dev/null
}

# compare_runs STORE ENDPOINTS REP: 64 writers then 1 writer of 256 B values, on a fresh cluster.
compare_runs() {
  local store=$1 endpoints=$2 rep=$3 clients
  for clients in 64 1; do
    log "compare (round $rep): $store, $clients writers, load $(load)"
    "$YCSB" write --store "$store" --endpoints "$endpoints" --value-bytes 256 \
      --clients "$clients" --key-prefix "c$clients" --warmup-s 2 --round-s 2 --duration-s "$((COMPARE_S + 2))" --label "compare-$store-$clients-r$rep" \
      --out "$JSONL" || log "compare run failed: $store $clients round $rep (kept going)"
    record "{\"label\":\"compare-$store-$clients-r$rep\",\"kind\":\"load\",\"loadavg\":\"$(load)\"}"
  done
}

compare_store() {
  case $1 in
    quorumkv) start_quorumkv; compare_runs quorumkv "$QKV_ENDPOINTS" "$2" ;;
    etcd) start_etcd; compare_runs etcd "$ETCD_ENDPOINTS" "$2" ;;
  esac
  stop_started
}

# BENCH_COMPARE_REPEAT rounds, the order alternating (quorumkv first in odd rounds, etcd first
# in even ones), so that a drift in the machine's other load does not favour one store; each
# round's ratio is reported, and the median of the rounds.
scenario_compare() {
  local rep
  for rep in $(seq "$COMPARE_REPEAT"); do
    if [ $((rep % 2)) = 1 ]; then
      compare_store quorumkv "$rep"; compare_store etcd "$rep"
    else
      compare_store etcd "$rep"; compare_store quorumkv "$rep"
    fi
  done
}

GROWN=0
scenario_growth() {
  start_quorumkv
  local pids dirs
  pids="$(node_pid 1),$(node_pid 2),$(node_pid 3)"
  dirs="$DATA/quorumkv/node-1,$DATA/quorumkv/node-2,$DATA/quorumkv/node-3"
  log "growth: 64 writers of 1 KiB until $MIB MiB, load $(load)"
  record "{\"label\":\"growth\",\"kind\":\"load\",\"loadavg\":\"$(load)\"}"
  "$YCSB" write --store quorumkv --endpoints "$QKV_ENDPOINTS" --value-bytes 1024 \
    --clients 64 --key-prefix g --round-s "$ROUND_S" --until-mib "$MIB" \
    --probe-pids "$pids" --probe-dirs "$dirs" --label growth --out "$JSONL" \
    || log "growth run had errors (see $JSONL)"
  record "{\"label\":\"growth\",\"kind\":\"load-after\",\"loadavg\":\"$(load)\"}"
  GROWN=1
}

# wait_ready ADMIN_ADDR CLIENT_ADDR T0_MS LABEL: records ready_s (admin /health/ready is 200)
# and read_s (a read through that node's client port succeeds), both from T0_MS.
wait_ready() {
  local admin=$1 client=$2 t0=$3 label=$4 ready_ms="" read_ms="" deadline=$((SECONDS + READY_MAX_S))
  while [ $SECONDS -lt $deadline ] && { [ -z "$ready_ms" ] || [ -z "$read_ms" ]; }; do
    if [ -z "$ready_ms" ] && curl -sf -o /dev/null "http://$admin/health/ready"; then
      ready_ms=$(($(now_ms) - t0))
    fi
    if [ -z "$read_ms" ] && "$QUORUMKV" get g:000000000000 --endpoints "$client" \
      --timeout-ms 1000 >/dev/null 2>&1; then
      read_ms=$(($(now_ms) - t0))
    fi
    sleep 0.1
  done
  log "$label: ready after ${ready_ms:-never} ms, first read after ${read_ms:-never} ms"
  record "{\"label\":\"$label\",\"kind\":\"restart\",\"ready_ms\":${ready_ms:-null},\"read_ms\":${read_ms:-null},\"loadavg\":\"$(load)\",\"disk_bytes\":$(du -sb "$DATA/quorumkv/node-2" | cut -f1)}"
}

scenario_restart() {
  [ "$GROWN" = 1 ] || { log "restart needs growth first"; return 1; }
  local pid signal n=0 admin="127.0.0.1:$((BASE + 302))" client="127.0.0.1:$((BASE + 2))"
  for signal in TERM KILL; do
    n=$((n + 1))
    if [ "$n" = 1 ]; then pid=$(node_pid 2); else pid=$RESTARTED_PID; fi
    log "restart: SIGTERM/SIGKILL node 2 (pid $pid) with SIG$signal, load $(load)"
    kill "-$signal" "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    local t0
    t0=$(now_ms)
    start "node-2-restart-$n" "$QUORUMKV" server --config "$DATA/quorumkv/node-2.toml" \
      --admin-addr "$admin"
    sleep 0.2
    RESTARTED_PID=$(pgrep -P "${PIDS[-1]}" -x quorumkv || true)
    wait_ready "$admin" "$client" "$t0" "restart-sig$(echo $signal | tr 'A-Z' 'a-z')"
  done
}

scenario_transfer() {
  [ "$GROWN" = 1 ] || { log "transfer needs growth first"; return 1; }
  local stop=$OUT/storage-transfer.stop t0 done_ms="" deadline
  rm -f "$stop"
  log "transfer: 64 writers (256 B) while node 4 joins, load $(load)"
  record "{\"label\":\"transfer\",\"kind\":\"load\",\"loadavg\":\"$(load)\"}"
  "$YCSB" write --store quorumkv --endpoints "$QKV_ENDPOINTS" --value-bytes 256 \
    --clients 64 --key-prefix t --round-s 5 --warmup-s 5 --stop-file "$stop" \
    --label transfer --out "$JSONL" >"$LOGS/transfer-writers.out" 2>&1 &
  local writers=$!
  sleep 5
  t0=$(now_ms)
  start node-4 "$QUORUMKV" cluster join --via "127.0.0.1:$((BASE + 1))" --node-id 4 \
    --peer-addr "127.0.0.1:$((BASE + 104))" --client-addr "127.0.0.1:$((BASE + 4))" \
    --data-dir "$DATA/quorumkv/node-4" --admin-addr "127.0.0.1:$((BASE + 304))"
  deadline=$((SECONDS + TRANSFER_MAX_S))
  while [ $SECONDS -lt $deadline ]; do
    sleep 1
    # Caught up: node 4 hosts as many replicas as the map places on it (at least one), is a
    # voter of each of them, and lags by at most 100 entries in each.
    if "$QUORUMKV" cluster status --json --endpoints "$QKV_ENDPOINTS" --timeout-ms 3000 2>/dev/null \
      | jq -e '
          (.members[] | select(.member.id == 4)) as $m
          | [.groups[] | select(.target | index(4))] as $g
          | $m.target_replicas > 0 and $m.replicas == $m.target_replicas
            and ($g | length) == $m.target_replicas
            and all($g[]; (.voters | index(4)) and ((.lag_entries["4"] // 1e9) <= 100))' \
        >/dev/null 2>&1; then
      done_ms=$(($(now_ms) - t0))
      break
    fi
  done
  touch "$stop"
  wait "$writers" || log "transfer writers had errors (see $LOGS/transfer-writers.out)"
  cat "$LOGS/transfer-writers.out" >&2
  log "transfer: node 4 caught up after ${done_ms:-never} ms"
  record "{\"label\":\"transfer\",\"kind\":\"transfer\",\"caught_up_ms\":${done_ms:-null},\"loadavg\":\"$(load)\",\"node4_disk_bytes\":$(du -sb "$DATA/quorumkv/node-4" | cut -f1)}"
  rm -f "$stop"
}

report() {
  local q e
  {
    echo "# quorumkv storage benchmarks (issue 11)"
    echo
    echo "Generated by \`${BENCH_COMMAND:-make bench-storage BENCH_STORAGE_MIB=$MIB}\` on $(date -u +'%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)'); $(nproc) cores, load average before: $LOAD_BEFORE, after: $(load)."
    echo
    if grep -q '"label":"compare-' "$JSONL"; then
      echo "## compare: fresh keys, 256 B values, closed loop, ${COMPARE_S} s after 2 s warm-up"
      echo
      echo "| store | writers | puts/s | p50 ms | p99 ms | max ms | errors | load avg |"
      echo "|---|---|---|---|---|---|---|---|"
      jq -r -s '
        (map(select(.kind == "load")) | map({key: .label, value: .loadavg}) | from_entries) as $load
        | .[] | select(.kind == "total" and (.label | startswith("compare-")))
        | "| \(.total.store) | \(.total.clients) | \(.total.ops_per_s | floor) | \(.total.latency.p50_ms * 100 | round / 100) | \(.total.latency.p99_ms * 100 | round / 100) | \(.total.latency.max_ms * 100 | round / 100) | \(.total.errors) | \($load[.label]) |"' "$JSONL"
      for c in 64 1; do
        echo
        # Per round: the ratio of the two stores' rates; then the median of the rounds'
        # rates and of their ratios.
        jq -r -s --arg c "$c" '
          def rate($store; $rep): map(select(.kind == "total" and .label == "compare-\($store)-\($c)-r\($rep)"))[0].total.ops_per_s // 0;
          def median: sort | if length == 0 then 0 else .[(length - 1) / 2 | floor] end;
          def r2: . * 100 | round / 100;
          [.[] | select(.kind == "total" and (.label | test("^compare-quorumkv-\($c)-r"))) | .label | sub(".*-r"; "")] as $reps
          | [$reps[] as $r | {rep: $r, q: rate("quorumkv"; $r), e: rate("etcd"; $r)}] as $rounds
          | ($rounds | map(select(.e > 0) | .q / .e)) as $ratios
          | "\($c) writers: quorumkv / etcd per round: \($rounds | map("\(.q | floor) / \(.e | floor) = \(if .e > 0 then (.q / .e | r2 | tostring) + "x" else "n/a" end)") | join("; "))"
            + "; median ratio \($ratios | median | r2)x (median rates \($rounds | map(.q) | median | floor) vs \($rounds | map(.e) | median | floor) puts/s)"' "$JSONL"
      done
      echo
    fi
    if grep -q '"label":"growth"' "$JSONL"; then
      echo "## growth: 64 writers, 1 KiB values, fresh keys, until $MIB MiB acknowledged"
      echo
      echo "| round | at s | puts/s | p99 ms | max ms | errors | acked MiB | RSS MiB (n1, n2, n3) | disk MiB (n1, n2, n3) |"
      echo "|---|---|---|---|---|---|---|---|---|"
      jq -r 'select(.label == "growth" and .kind == "round") | .round
        | "| \(.round) | \(.at_s | floor) | \(.ops_per_s | floor) | \(.latency.p99_ms * 10 | round / 10) | \(.latency.max_ms * 10 | round / 10) | \(.errors) | \(.acked_bytes / 1048576 | floor) | \(.rss_bytes | map(if . == null then "-" else (. / 1048576 | floor | tostring) end) | join(", ")) | \(.disk_bytes | map(. / 1048576 | floor | tostring) | join(", ")) |"' "$JSONL"
      echo
      # A full round lasted (about) BENCH_ROUND_S; the last one is usually cut short.
      jq -r -s --argjson round_s "$ROUND_S" '
        map(select(.label == "growth" and .kind == "round") | .round) as $r
        | ($r | map(select(.seconds >= $round_s * 0.9))) as $full
        | "first full round \($full[0].ops_per_s | floor) puts/s, last full round \($full[-1].ops_per_s | floor) puts/s (\($full[-1].ops_per_s / $full[0].ops_per_s * 100 | floor)%); slowest request \($r | map(.latency.max_ms) | max | floor) ms; largest RSS of a node \($r | map(.rss_bytes[] // 0) | max / 1048576 | floor) MiB; disk at the end \($r[-1].disk_bytes | map(. / 1048576 | floor | tostring) | join(", ")) MiB"' "$JSONL"
      jq -r 'select(.label == "growth" and .kind == "total") | .total
        | "whole run: \(.ops) puts in \(.seconds | floor) s = \(.ops_per_s | floor)/s, p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms, max \(.latency.max_ms) ms, errors \(.errors)"' "$JSONL"
      jq -r 'select(.label == "growth" and (.kind == "load" or .kind == "load-after")) | "\(.kind): load average \(.loadavg)"' "$JSONL"
      echo
    fi
    if grep -q '"kind":"restart"' "$JSONL"; then
      echo "## restart of node 2 holding the grown data"
      echo
      echo "| how | /health/ready after ms | first read through it after ms | node 2 on disk MiB | load avg |"
      echo "|---|---|---|---|---|"
      jq -r 'select(.kind == "restart") | "| \(.label) | \(.ready_ms) | \(.read_ms) | \(.disk_bytes / 1048576 | floor) | \(.loadavg) |"' "$JSONL"
      echo
    fi
    if grep -q '"kind":"transfer"' "$JSONL"; then
      echo "## snapshot transfer: node 4 joins while 64 writers (256 B) run"
      echo
      jq -r 'select(.kind == "transfer") | "node 4 caught up after \(.caught_up_ms) ms, \(.node4_disk_bytes / 1048576 | floor) MiB on its disk; load average at the end \(.loadavg)"' "$JSONL"
      jq -r 'select(.label == "transfer" and .kind == "total") | .total
        | "writers during the transfer: \(.ops_per_s | floor) puts/s, p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms, max \(.latency.max_ms) ms, errors \(.errors)"' "$JSONL"
      echo
      echo "| round | at s | puts/s | p99 ms | max ms | errors |"
      echo "|---|---|---|---|---|---|"
      jq -r 'select(.label == "transfer" and .kind == "round") | .round
        | "| \(.round) | \(.at_s | floor) | \(.ops_per_s | floor) | \(.latency.p99_ms * 10 | round / 10) | \(.latency.max_ms * 10 | round / 10) | \(.errors) |"' "$JSONL"
    fi
  } >"$MD"
}

# Debian packages the chosen scenarios need (jq for the report; etcd for compare; protoc to
# build quorumkv-ycsb with its etcd client), installed when missing.
install_missing() {
  local missing=()
  command -v jq >/dev/null || missing+=(jq)
  case " $SCENARIOS " in
    *" compare "*) command -v etcd >/dev/null || missing+=(etcd-server) ;;
  esac
  if [ "${BENCH_BUILD:-1}" = 1 ] && [ -z "${BENCH_QUORUMKV:-}${BENCH_YCSB:-}" ]; then
    command -v protoc >/dev/null || missing+=(protobuf-compiler)
  fi
  apt_install "${missing[@]}"
}

main() {
  LOAD_BEFORE=$(load)
  install_missing
  if [ "${BENCH_BUILD:-1}" = 1 ] && [ -z "${BENCH_QUORUMKV:-}${BENCH_YCSB:-}" ]; then
    log "building release binaries"
    cargo build --release -p node --bin quorumkv
    cargo build --release -p workloads --features etcd --bin quorumkv-ycsb
  fi
  mkdir -p "$OUT" "$LOGS" "$DATA"
  : >"$JSONL"
  local started=$SECONDS s
  for s in $SCENARIOS; do
    case $s in
      compare) scenario_compare ;;
      growth) scenario_growth ;;
      restart) scenario_restart ;;
      transfer) scenario_transfer ;;
      *) log "unknown scenario $s (compare, growth, restart, transfer)"; exit 2 ;;
    esac
  done
  stop_started
  report
  # The nodes' logs (slow checkpoints are logged there) outlive the data.
  cp "$DATA"/quorumkv/node-*.log "$LOGS"/ 2>/dev/null || true
  rm -rf "$DATA"
  log "done in $((SECONDS - started)) s: $MD"
  cat "$MD"
}

main "$@"
