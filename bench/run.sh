#!/usr/bin/env bash
# Runs the benchmarks; results go to stdout (summaries and RESULT JSON lines).
#   bench/run.sh              all of them
#   bench/run.sh ingest       readings/s through the bus into core-data vs mosquitto's raw rate
#   bench/run.sh footprint    start-to-healthy time and idle memory of `outpost up`
#   bench/run.sh encoding     bytes per reading on the bus, JSON vs compact CBOR
#   bench/run.sh store        raw append rate of core-data's encrypted store
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test >/dev/null
cargo build --release --locked -p outpost -p outpost-bench
B=target/release/outpost-bench
O=target/release/outpost
what="${1:-all}"

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), \
$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(date -u +%Y-%m-%d)"

run() { echo "== $*"; "$@"; }

if [[ $what == all || $what == ingest ]]; then
  # Three runs each: wall-clock figures on a shared 2-core machine are noisy.
  for i in 1 2 3; do run "$B" ingest --outpost "$O" --events 50000 --readings 10 --devices 100; done
  run "$B" ingest --outpost "$O" --events 50000 --readings 10 --devices 100 --encoding cbor
  run "$B" ingest --outpost "$O" --events 100000 --readings 1 --devices 100
fi
if [[ $what == all || $what == footprint ]]; then
  run "$B" footprint --outpost "$O" --runs 5 --idle-s 15
fi
if [[ $what == all || $what == encoding ]]; then
  run "$B" encoding
fi
if [[ $what == all || $what == store ]]; then
  run "$B" store --events 200000 --readings 10 --devices 100 --batch 1000
fi
