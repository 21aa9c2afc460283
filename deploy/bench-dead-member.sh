#!/usr/bin/env bash
# Benchmark: what a member whose address drops packets costs each new CLI process.
# Starts `quorumkv local` (3 nodes) inside a private network namespace (unshare -n, needs
# root), makes node 1's ports drop every packet (iptables DROP, as a killed container's address
# does), then times 20 `quorumkv put` processes using the default endpoints (node 1 first).
#   deploy/bench-dead-member.sh [QUORUMKV_BINARY]       (default: target/release/quorumkv)
# Prints: "dead-member cost: 20 CLI puts in N ms (N ms/put); healthy: N ms".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$root/target/release/quorumkv}")
puts=${PUTS:-20}
if [ -z "${QKV_IN_NETNS:-}" ]; then
    exec unshare -n env QKV_IN_NETNS=1 PUTS="$puts" bash "$0" "$bin"
fi
ip link set lo up
dir=$(mktemp -d /tmp/qkv-dead-member.XXXXXX)
"$bin" local --dir "$dir" > "$dir/local.log" 2>&1 &
local_pid=$!
trap 'kill $local_pid 2>/dev/null; wait $local_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
    "$bin" put warmup 1 --timeout-ms 1000 >/dev/null 2>&1 && break
    sleep 0.2
done
run_puts() {
    local start end
    start=$(date +%s%N)
    for i in $(seq "$puts"); do "$bin" put "k$i" "v$i" >/dev/null; done
    end=$(date +%s%N)
    echo $(( (end - start) / 1000000 ))
}
healthy_ms=$(run_puts)
# Node 1 (client 7401, peer 7501) now drops everything, like a dead container's address.
iptables -A INPUT -p tcp --dport 7401 -j DROP
iptables -A INPUT -p tcp --dport 7501 -j DROP
# Let the others notice and elect leaders for node 1's groups.
for _ in $(seq 100); do
    "$bin" put settle 1 --timeout-ms 2000 >/dev/null 2>&1 && break
    sleep 0.2
done
sleep 3
dead_ms=$(run_puts)
echo "dead-member cost ($bin): $puts CLI puts in $dead_ms ms ($((dead_ms / puts)) ms/put); healthy: $healthy_ms ms ($((healthy_ms / puts)) ms/put)"
