#!/usr/bin/env bash
# Profiles one measured section of kervan-bench with perf. The bench switches perf on at the
# start of the section and off at its end (perf's control fifo), so the profile holds the
# measurement and not the data generation around it.
#
#   docs/perf/profile.sh SECTION SCENARIO [kervan-bench args...]   record, then summarise
#   docs/perf/profile.sh --report SECTION                          summarise a recorded profile
#   docs/perf/profile.sh ingest ingest --quick
#
# Sections: catch-up, reconnect, ingest, ingest-gossip, write, propagation, cold-start, query.
# Prints the node and protocol functions (and the library calls under them) by inclusive share,
# then the hottest functions by self time. Data: target/kervan-bench/SECTION.perf.data.
set -eu
cd "$(dirname "$0")/../.."
out=target/kervan-bench

report() {
  local data="$out/$1.perf.data"
  local samples
  samples=$(perf report -i "$data" --stdio 2>/dev/null | sed -n 's/^# Samples: \([0-9kKM]*\).*/\1/p' | head -1 || true)
  echo "== $1: $samples samples (cpu-clock, all threads; shares are of all samples)"
  echo "-- inclusive (children)"
  perf report -i "$data" --children --sort symbol --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9]' |
    grep -E 'kervan_(node|protocol)::|automerge::(automerge::Automerge::(apply_changes_log_patches|load_with_options|hydrate_obj|save_with_options)|autocommit::AutoCommit::(apply_changes|commit_with|save_with_options|load))|ed25519_dalek::verifying::VerifyingKey::verify_strict|sled::tree::Tree::(insert_inner|flush)|libp2p_gossipsub::behaviour::Behaviour<D,F>::handle_received_message|axum::serve' |
    grep -v '(inlined)' |
    sed -E 's/^ +([0-9.]+%) +([0-9.]+%) +\[.\] +/\1 \2  /; s/ +- +- *$//; s/ +$//' |
    cut -c1-150 | head -40 || true
  echo "-- self"
  perf report -i "$data" --no-children --sort symbol --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9]' |
    sed -E 's/^ +([0-9.]+%) +\[.\] +/\1  /; s/ +- +- *$//; s/ +$//' |
    cut -c1-150 | head -20 || true
}

if [ "${1:-}" = "--report" ]; then
  report "$2"
  exit 0
fi
section=$1
shift
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkfifo "$tmp/ctl" "$tmp/ack"
cargo build --release -p kervan-tests --bin kervan-bench >/dev/null 2>&1
KERVAN_BENCH_PERF_CTL="$tmp/ctl" KERVAN_BENCH_PERF_ACK="$tmp/ack" KERVAN_BENCH_PROFILE="$section" \
  perf record -F 499 -g --call-graph dwarf,32768 --control "fifo:$tmp/ctl,$tmp/ack" -D -1 \
  -o "$out/$section.perf.data" -- target/release/kervan-bench "$@" --out "$tmp/bench.json" \
  >"$out/$section.bench.log" 2>&1
report "$section"
