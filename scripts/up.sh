#!/usr/bin/env bash
# Builds Outpost and starts the edge node in the foreground with embedded defaults.
# Extra arguments go to `outpost`, e.g. scripts/up.sh --data-dir /tmp/outpost
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p outpost
exec target/release/outpost "$@" up
