#!/usr/bin/env bash
# Runs benchmarks against two builds of Outpost, interleaved, with the same load generator:
# the build of REV (a commit, built in a worktree under target/compare) and this checkout's.
#   bench/compare.sh REV                 ingest, mqtt-devices, gateway and footprint
#   bench/compare.sh REV ingest gateway  only those
# Results go to stdout, each run headed by `== <build> <benchmark>`.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: bench/compare.sh REV [benchmark ...]}"
shift
what=("${@:-ingest mqtt-devices gateway footprint}")
read -r -a what <<<"${what[*]}"
scripts/setup.sh --bench >/dev/null

# Both builds share the target dir, so the second one rebuilds only what differs.
dir="target/compare/$rev"
if [[ ! -x $dir/outpost ]]; then
  tree="target/compare/tree-$rev"
  git worktree add --force --detach "$tree" "$rev" >/dev/null
  (cd "$tree" && CARGO_TARGET_DIR="$PWD/../../../target" cargo build --release --locked -p outpost)
  mkdir -p "$dir"
  cp target/release/outpost "$dir/outpost"
  git worktree remove --force "$tree"
fi
cargo build --release --locked -p outpost -p outpost-bench
mkdir -p target/compare/head
cp target/release/outpost target/compare/head/outpost
B=target/release/outpost-bench

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), \
$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(date -u +%Y-%m-%d)"

bench() {
  local name=$1 o=$2
  case $name in
    ingest) "$B" ingest --outpost "$o" --events 50000 --readings 10 --devices 100 ;;
    mqtt-devices) "$B" mqtt-devices --outpost "$o" --devices 1000 --per-device 20 --readings 10 ;;
    gateway) "$B" gateway --outpost "$o" --seconds 10 --connections 50 --rounds 5 ;;
    footprint)
      # A freshly copied binary sits in the page cache in large folios, which inflates RSS
      # (file-backed, shared) for the build copied last; start both from a cold cache.
      if [[ -w /proc/sys/vm/drop_caches ]]; then sync && echo 3 >/proc/sys/vm/drop_caches; fi
      "$B" footprint --outpost "$o" --runs 5 --idle-s 15 ;;
    *) echo "unknown benchmark $name" >&2; exit 2 ;;
  esac
}

# Three rounds, alternating which build goes first, so drift on a shared machine hits both.
for name in "${what[@]}"; do
  for round in 1 2 3; do
    builds=("$rev" head)
    ((round % 2 == 0)) && builds=(head "$rev")
    for build in "${builds[@]}"; do
      echo "== $build $name (round $round)"
      bench "$name" "target/compare/$build/outpost"
    done
    [[ $name == footprint ]] && break # five runs inside already
  done
done
