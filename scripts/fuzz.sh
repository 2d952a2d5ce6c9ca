#!/usr/bin/env bash
# Runs Kervan's cargo-fuzz targets (fuzz/fuzz_targets/) one after another, each for a fixed time,
# and fails if any of them crashes, panics, times out or runs out of memory.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   each target for SECONDS (default 60)
#   scripts/fuzz.sh --smoke [TARGET...]                 CI: each target for 10 s
#
# Targets: envelope, sync_message, bundle_import, rules_check (default: all four).
#
# What it needs it installs: cargo-fuzz (pinned, `cargo install --locked`) and, as root on a
# Debian-like machine, a C++ compiler for libFuzzer. It needs Rust's stable toolchain; the fuzz
# build uses nightly flags, which RUSTC_BOOTSTRAP=1 allows on stable.
#
# Corpora: the committed seeds in fuzz/corpus/<target>/ and past crashes in
# fuzz/regressions/<target>/ are read but never written; what libFuzzer finds goes to
# fuzz/target/corpus/<target>/ (git-ignored, kept between runs).
# A crashing input lands in fuzz/artifacts/<target>/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a <target> fuzz/artifacts/<target>/<file>
# (from the repository root) and keep it in fuzz/regressions/<target>/ once fixed.
#
# Environment:
#   FUZZ_SANITIZER      sanitizer of the build: none (default) or address
#   FUZZ_SMOKE_SECONDS  seconds per target of --smoke (default 10)
#   FUZZ_TIMEOUT        seconds one input may take before it counts as a hang (default 20)
#   CARGO_FUZZ_VERSION  the cargo-fuzz to install when it is missing (default 0.13.2)
set -euo pipefail

readonly ALL_TARGETS=(envelope sync_message bundle_import rules_check)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly root

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

seconds=60
case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
    --smoke)
        seconds="${FUZZ_SMOKE_SECONDS:-10}"
        shift
        ;;
    '' | *[!0-9]*) ;;
    *)
        seconds="$1"
        shift
        ;;
esac
if [[ ! "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: expected a positive number of seconds, found '$seconds'" >&2
    exit 2
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${ALL_TARGETS[@]}")
fi
for t in "${targets[@]}"; do
    if [[ ! -f "$root/fuzz/fuzz_targets/$t.rs" ]]; then
        echo "fuzz.sh: no fuzz target '$t' (expected one of: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
done

sanitizer="${FUZZ_SANITIZER:-none}"
timeout="${FUZZ_TIMEOUT:-20}"
cargo_fuzz_version="${CARGO_FUZZ_VERSION:-0.13.2}"

# --- tools -----------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    echo "fuzz.sh: cargo not found: install Rust's stable toolchain (https://rustup.rs)" >&2
    exit 2
fi
if ! command -v c++ >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "fuzz.sh: installing a C++ compiler (libFuzzer is built from source)"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends g++ >/dev/null
    else
        echo "fuzz.sh: no C++ compiler (c++) found: libFuzzer is built from source;" \
            "install one (Debian: apt-get install g++)" >&2
        exit 2
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz $cargo_fuzz_version (a few minutes)"
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

# --- scratch ---------------------------------------------------------------------------------
# The bundle_import and sync_message targets open a sled store under TMPDIR and every ingest
# flushes it: on tmpfs a flush costs nothing. The directory goes when the script ends.
scratch_base="${TMPDIR:-/tmp}"
if [[ -d /dev/shm && -w /dev/shm ]]; then
    scratch_base=/dev/shm
fi
scratch="$(mktemp -d "$scratch_base/kervan-fuzz-scratch.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
logs="$root/fuzz/target/fuzz-logs"
mkdir -p "$logs"

cd "$root"
export RUSTC_BOOTSTRAP=1
fuzz_flags=(--sanitizer "$sanitizer" --debug-assertions)

echo "fuzz.sh: building ${targets[*]} (sanitizer: $sanitizer, debug assertions on)"
build_start=$SECONDS
for t in "${targets[@]}"; do
    cargo fuzz build "${fuzz_flags[@]}" "$t"
done
echo "fuzz.sh: built in $((SECONDS - build_start)) s"

# --- runs ------------------------------------------------------------------------------------
failed=()
summary=()
for t in "${targets[@]}"; do
    work="$root/fuzz/target/corpus/$t"
    mkdir -p "$work"
    log="$logs/$t.log"
    echo "fuzz.sh: $t for $seconds s (log: ${log#"$root"/})"
    status=0
    # The first corpus directory receives new inputs; the committed seeds and the inputs that
    # once crashed the target are only read.
    corpora=("$work" "fuzz/corpus/$t")
    if [[ -d "fuzz/regressions/$t" ]]; then
        corpora+=("fuzz/regressions/$t")
    fi
    TMPDIR="$scratch" cargo fuzz run "${fuzz_flags[@]}" "$t" "${corpora[@]}" -- \
        -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
    runs="$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}' | tail -n 1 || true)"
    speed="$(grep -E '^stat::average_exec_per_sec:' "$log" | awk '{print $2}' | tail -n 1 || true)"
    if [[ -z "$runs" && -n "$done_line" ]]; then
        runs="$(sed -E 's/^#([0-9]+).*/\1/' <<<"$done_line")"
    fi
    if [[ $status -eq 0 ]]; then
        summary+=("$(printf '%-14s ok      %10s execs  %6s exec/s' "$t" "${runs:-?}" "${speed:-?}")")
        echo "fuzz.sh: $t: ${done_line:-finished}"
    else
        artifact="$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)"
        summary+=("$(printf '%-14s FAILED  %10s execs  artifact: %s' "$t" "${runs:-?}" "${artifact:-none (see the log)}")")
        failed+=("$t")
        echo "fuzz.sh: $t FAILED (exit $status); the end of its log:" >&2
        tail -n 60 "$log" >&2
        if [[ -n "$artifact" ]]; then
            echo "fuzz.sh: crashing input: $artifact" >&2
        fi
    fi
done

echo
echo "fuzz.sh: $seconds s per target"
printf '  %s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: failed: ${failed[*]}" >&2
    exit 1
fi
