#!/usr/bin/env bash
# Installs what the tests need and runs every check CI runs: formatting, lints, the whole
# test suite (unit, service and end-to-end tests against real peers), the docs build, and a
# short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step prints when it starts, counted from here, so a slow run shows where it went.
t0=$(date +%s)
step() { echo "== $1 (at $(($(date +%s) - t0)) s)"; }
step "setup (scripts/setup.sh --test)"
scripts/setup.sh --test
if [ "$(id -u)" != 0 ]; then
    echo "warning: not root: the tests of the group 'root' (.config/nextest.toml) will fail" >&2
fi

# The tests share one PostgreSQL server, started by the first test that needs it
# (crates/outpost-testkit/src/postgres.rs); it stops when this run ends.
pg_data="${TMPDIR:-/tmp}/outpost-test-postgres-$(id -u)/data"
stop_postgres() {
    [ -f "$pg_data/postmaster.pid" ] || return 0
    pg_ctl="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)/pg_ctl"
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$pg_ctl" -D "$pg_data" stop -m fast >/dev/null 2>&1 || true
    else
        "$pg_ctl" -D "$pg_data" stop -m fast >/dev/null 2>&1 || true
    fi
}
trap stop_postgres EXIT

step "the console's unit tests (vitest)"
(cd web && npx --no-install vitest run --reporter=dot)
step "cargo fmt"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
step "container image (deploy/build-image.sh), for the container tests"
OUTPOST_IMAGE_PROFILE=image-test deploy/build-image.sh
step "cargo nextest"
cargo nextest run --locked --workspace --no-fail-fast
step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet
step "fuzzing, 20 s per target"
scripts/fuzz.sh 20
echo "All checks passed in $(($(date +%s) - t0)) s."
