#!/usr/bin/env bash
# Installs what the tests need and runs every check CI runs: formatting, lints, the whole
# test suite (unit, service and end-to-end tests against real peers), the docs build, and a
# short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
if [ "$(id -u)" != 0 ]; then
    echo "warning: not root: the tests of the group 'root' (.config/nextest.toml) will fail" >&2
fi

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== container image (deploy/build-image.sh), for the container tests"
deploy/build-image.sh
echo "== cargo nextest"
cargo nextest run --locked --workspace --no-fail-fast
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet
echo "== fuzzing, 20 s per target"
scripts/fuzz.sh 20
echo "All checks passed."
