#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ (cargo fuzz, libFuzzer) for SECONDS each, starting from
# its committed corpus (fuzz/corpus/<target>); what it learns goes to target/fuzz-corpus,
# crashes to fuzz/artifacts/<target> (and the run fails).
#   scripts/fuzz.sh            20 s per target (what CI runs)
#   scripts/fuzz.sh 3600       an hour per target (bench/run.sh fuzz)
# Runs of a minute or less build with 16 codegen units instead of one: it builds faster and
# runs somewhat slower, which only long runs would notice. (Not a development build: that
# turns on dependencies' debug assertions, and tokio-modbus asserts on the short answers of
# a misbehaving device, which device-modbus handles.)
# Prints one line per target: executions, seconds, and the CPU seconds spent.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
build=(--release)
if ((seconds <= 60)); then
  build=(--release --codegen-units 16)
fi
root="$PWD"
cd fuzz
cargo +nightly fuzz build "${build[@]}" >/dev/null 2>&1 || cargo +nightly fuzz build "${build[@]}"
for t in $(cargo +nightly fuzz list); do
  work="$root/target/fuzz-corpus/$t"
  mkdir -p "$work" "corpus/$t"
  log="$root/target/fuzz-$t.log"
  start=$(date +%s)
  # One process; libFuzzer stops at max_total_time and exits non-zero on a crash.
  if ! cargo +nightly fuzz run "${build[@]}" "$t" "$work" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      >"$log" 2>&1; then
    echo "fuzz target $t failed; its log: $log" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  echo "fuzz $t: ${runs} executions in $(($(date +%s) - start)) s, 0 crashes"
done
