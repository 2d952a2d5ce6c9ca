#!/usr/bin/env bash
# Runs the seeded chaos test for many seeds: scripts/chaos.sh [COUNT] [FIRST_SEED]
# (default 20 seeds from a random start). Each seed is its own run, so one failure does not
# hide the others; failing seeds are listed at the end with the command that replays each.
set -euo pipefail
cd "$(dirname "$0")/.."

count="${1:-20}"
first="${2:-$(( (RANDOM << 15 | RANDOM) ))}"
steps="${KERVAN_CHAOS_STEPS:-60}"

cargo build --release -p kervan-tests --tests --bins --quiet
failed=()
start=$(date +%s)
for ((i = 0; i < count; i++)); do
    seed=$((first + i))
    log="target/chaos/seed-$seed.log"
    mkdir -p target/chaos
    if KERVAN_CHAOS_SEED="$seed" KERVAN_CHAOS_STEPS="$steps" \
        cargo test --release -p kervan-tests --test scenarios chaos -- --nocapture >"$log" 2>&1; then
        echo "seed $seed: ok  $(grep -m1 'converged' "$log" | sed 's/^chaos seed [0-9]*: //')"
    else
        echo "seed $seed: FAILED (log: $log)"
        failed+=("$seed")
    fi
done
echo "$count seeds, $((count - ${#failed[@]})) passed, $(( $(date +%s) - start )) s"
if ((${#failed[@]})); then
    for s in "${failed[@]}"; do
        echo "replay: KERVAN_CHAOS_SEED=$s KERVAN_CHAOS_STEPS=$steps cargo test -p kervan-tests --test scenarios chaos -- --nocapture"
    done
    exit 1
fi
