#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS seconds (default 60), one after another, and prints
# one line per target: executions, libFuzzer's coverage figure (cov:), corpus size and verdict.
# Usage: make fuzz FUZZ_SECONDS=60 [FUZZ_TARGETS="wal resp"]; details in fuzz/README.md.
set -uo pipefail
cd "$(dirname "$0")"
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TARGETS=${FUZZ_TARGETS:-"peer_frame client_frame wal snapshot state_image snapshot_chunk backup resp config edn jsonl"}
# libFuzzer's limits: a run that goes over one counts as a failure (an out-of-memory crash).
FUZZ_RSS_LIMIT_MB=${FUZZ_RSS_LIMIT_MB:-2048}
FUZZ_MALLOC_LIMIT_MB=${FUZZ_MALLOC_LIMIT_MB:-512}
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-65536}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 2
fi
# cargo-fuzz passes nightly-only flags (-Z) to rustc; this machine has a stable toolchain only,
# and RUSTC_BOOTSTRAP=1 lets stable rustc accept them.
export RUSTC_BOOTSTRAP=1
mkdir -p logs
failed=0
summary=()
for target in $FUZZ_TARGETS; do
    mkdir -p "corpus/$target"
    log="logs/$target.log"
    cargo fuzz run --sanitizer address --debug-assertions "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb="$FUZZ_RSS_LIMIT_MB" \
        -malloc_limit_mb="$FUZZ_MALLOC_LIMIT_MB" -max_len="$FUZZ_MAX_LEN" \
        -print_final_stats=1 >"$log" 2>&1
    status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    corpus=$(find "corpus/$target" -type f | wc -l)
    verdict=ok
    if [ "$status" -ne 0 ]; then
        verdict="FAILED (exit $status; see fuzz/$log and fuzz/artifacts/$target/)"
        failed=1
    fi
    line="$target: seconds=$FUZZ_SECONDS execs=${execs:-?} cov=${cov:-?} corpus=$corpus $verdict"
    echo "$line"
    summary+=("$line")
done
echo "--- fuzz summary"
printf '%s\n' "${summary[@]}"
exit $failed
