#!/usr/bin/env bash
# Container fault test: a 3-node Compose cluster under a checked workload (register + set,
# quorumkv-jepsen --external, histories re-checked with quorumkv-check) while this script
#   1. docker-kills the metadata leader, then starts it again;
#   2. partitions a node (iptables DROP from both peers, inside its network namespace), heals;
#   3. restarts a node (docker restart: SIGTERM, graceful);
# then, under a second checked workload, restarts every node in turn (rolling restart) and
# reports the writers' longest pause.
# Passes when every acknowledged write is in the final reads and the register histories are
# linearizable. Prints the image size and the cluster's start time. Cleans up after itself
# (containers, network, volumes) unless KEEP=1.
#   deploy/test.sh               # builds what it needs (release profile)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
project=${QKV_PROJECT:-qkvdeploytest}
export QUORUMKV_IMAGE=${QUORUMKV_IMAGE:-quorumkv:test}
export QKV_SUBNET_PREFIX=${QKV_SUBNET_PREFIX:-172.28.77}
export QKV_PORT_BASE=${QKV_PORT_BASE:-2737} QKV_ADMIN_PORT_BASE=${QKV_ADMIN_PORT_BASE:-2937}
duration_s=${DURATION_S:-35}
rolling_s=${ROLLING_S:-36}
compose=(docker-compose -p "$project" -f deploy/docker-compose.yml)
out=$(mktemp -d /tmp/qkv-deploy-test.XXXXXX)
# release (default) or debug: CI uses the debug binaries `make test` already built.
profile=${QKV_PROFILE:-release}
bin=$root/target/$profile

log() { printf '[deploy-test %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
cleanup() {
    local code=$?
    if [ -n "${workload_pid:-}" ]; then kill "$workload_pid" 2>/dev/null || true; fi
    if [ "${KEEP:-}" != 1 ]; then
        "${compose[@]}" logs --no-color > "$out/compose.log" 2>&1 || true
        "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    [ $code -eq 0 ] && log "PASS (artifacts in $out)" || log "FAIL (exit $code; artifacts and logs in $out)"
}
trap cleanup EXIT

log "building the binaries and the image"
if [ -z "${SKIP_CARGO:-}" ]; then
    release_flag=$([ "$profile" = release ] && echo --release || true)
    cargo build $release_flag -q -p node --bin quorumkv -p workloads --bin quorumkv-jepsen -p checker --bin quorumkv-check
fi
SKIP_CARGO=1 QKV_PROFILE=$profile deploy/build-image.sh
size=$(docker image inspect -f '{{.Size}}' "$QUORUMKV_IMAGE")

ip_of() { echo "$QKV_SUBNET_PREFIX.1$1"; }
endpoints="$(ip_of 1):7379,$(ip_of 2):7379,$(ip_of 3):7379"
container() { "${compose[@]}" ps -q "qkv$1"; }
healthy_count() {
    local n=0 id
    for i in 1 2 3; do
        id=$(container "$i")
        [ -n "$id" ] && [ "$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null)" = healthy ] && n=$((n + 1))
    done
    echo $n
}
wait_healthy() {
    local want=$1 bound_s=$2 start=$SECONDS
    while [ "$(healthy_count)" -lt "$want" ]; do
        if [ $((SECONDS - start)) -ge "$bound_s" ]; then
            log "not $want healthy containers within ${bound_s}s"; "${compose[@]}" ps; return 1
        fi
        sleep 0.5
    done
}
# The node that leads the metadata group (status of any node names it).
meta_leader() {
    "$bin/quorumkv" status --endpoints "$endpoints" --json --timeout-ms 3000 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(next((n["node_id"] for n in d["nodes"] if n.get("role")=="leader"), ""))'
}

"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
log "starting the cluster"
start_ns=$(date +%s%N)
"${compose[@]}" up -d
wait_healthy 3 90
start_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
log "3 containers healthy (ready) ${start_ms} ms after docker-compose up"

log "status --json (metrics_url per node):"
"$bin/quorumkv" status --endpoints "$endpoints" --json | tee "$out/status.json"
python3 - "$out/status.json" <<'PY'
import json, sys
nodes = json.load(open(sys.argv[1]))["nodes"]
assert len(nodes) == 3 and all(n.get("metrics_url", "").startswith("http://") for n in nodes), nodes
PY
for i in 1 2 3; do
    python3 - "$(ip_of "$i")" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}:9379/metrics", timeout=5).read().decode()
assert "quorumkv_raft_term" in text and text.rstrip().endswith("# EOF"), text[:300]
PY
done

log "workload for ${duration_s}s (register + set, checked)"
"$bin/quorumkv-jepsen" --external --endpoints "$endpoints" --duration-s "$duration_s" \
    --register-clients 4 --set-clients 2 --liveness-bound-s 30 --out "$out/faults" \
    > "$out/faults.log" 2>&1 &
workload_pid=$!
sleep 6

leader=$(meta_leader)
[ -n "$leader" ] || { log "no metadata leader found"; exit 1; }
log "fault 1: docker kill the metadata leader (node $leader)"
docker kill "$(container "$leader")" >/dev/null
sleep 6
log "  start node $leader again"
docker start "$(container "$leader")" >/dev/null
wait_healthy 3 60

victim=$(( leader % 3 + 1 ))
pid=$(docker inspect -f '{{.State.Pid}}' "$(container "$victim")")
log "fault 2: partition node $victim (pid $pid) from its peers"
for j in 1 2 3; do
    [ "$j" = "$victim" ] && continue
    nsenter -t "$pid" -n iptables -A INPUT -s "$(ip_of "$j")" -j DROP
done
sleep 6
for j in 1 2 3; do
    [ "$j" = "$victim" ] && continue
    nsenter -t "$pid" -n iptables -D INPUT -s "$(ip_of "$j")" -j DROP
done
log "  healed"
wait_healthy 3 60

other=$(( victim % 3 + 1 ))
log "fault 3: docker restart node $other (SIGTERM, graceful)"
docker restart -t 30 "$(container "$other")" >/dev/null
wait_healthy 3 60

finish_workload() {  # $1: phase name
    log "waiting for the $1 workload's verdict"
    if ! wait "$workload_pid"; then
        workload_pid=
        tail -20 "$out/$1.log"
        exit 1
    fi
    workload_pid=
    tail -3 "$out/$1.log"
    log "re-checking the $1 histories with quorumkv-check"
    "$bin/quorumkv-check" --model kv "$out/$1/register.jsonl"
    "$bin/quorumkv-check" --model set "$out/$1/set.jsonl"
}
finish_workload faults

# Writers' longest pause: the longest time one writing client (register write/cas, set add)
# went without a write completing successfully, over all writing clients.
longest_pause_ms() {
    python3 - "$out/$1/register.jsonl" "$out/$1/set.jsonl" <<'PY'
import json, sys
done = {}
for n, path in enumerate(sys.argv[1:]):
    kind = {}
    for line in open(path):
        e = json.loads(line)
        if e["type"] == "invoke":
            kind[e["id"]] = e["f"]
        elif e["type"] == "ok" and kind.get(e["id"]) in ("write", "cas", "add"):
            done.setdefault((n, e["process"]), []).append(e["time_ns"])
gaps = [b - a for times in done.values() for a, b in zip(sorted(times), sorted(times)[1:])]
print(max(gaps, default=0) // 1_000_000)
PY
}
# The longest single write, invocation to completion, whatever its outcome (a write that timed
# out ends its client process, so the gaps above miss the wait before it).
longest_write_ms() {
    python3 - "$out/$1/register.jsonl" "$out/$1/set.jsonl" <<'PY'
import json, sys
longest = 0
for path in sys.argv[1:]:
    started = {}
    for line in open(path):
        e = json.loads(line)
        if e["type"] == "invoke":
            if e["f"] in ("write", "cas", "add"):
                started[e["id"]] = e["time_ns"]
        elif e["id"] in started:
            longest = max(longest, e["time_ns"] - started[e["id"]])
print(longest // 1_000_000)
PY
}

log "rolling restart under load: docker restart (SIGTERM) of each node in turn"
"$bin/quorumkv-jepsen" --external --endpoints "$endpoints" --duration-s "$rolling_s" \
    --register-clients 4 --set-clients 2 --liveness-bound-s 30 --out "$out/rolling" \
    > "$out/rolling.log" 2>&1 &
workload_pid=$!
sleep 4
for i in 1 2 3; do
    log "  restarting node $i"
    docker restart -t 30 "$(container "$i")" >/dev/null
    wait_healthy 3 60
    sleep 2
done
finish_workload rolling
log "figures: image $((size / 1000)) kB; cluster start to 3 healthy: ${start_ms} ms"
for phase in rolling faults; do
    log "  $phase: writers' longest pause $(longest_pause_ms $phase) ms (longest gap between \
one client's successful writes), longest write $(longest_write_ms $phase) ms"
done
