#!/usr/bin/env bash
# Builds the container image outpost:dev (deploy/Containerfile) from a statically linked,
# stripped binary. Needs podman with runc (scripts/setup.sh --containers).
#   deploy/build-image.sh [TAG]
# By default it makes a release build (deploy/static-env.sh). OUTPOST_IMAGE_BINARY names a
# statically linked binary built already instead: the test suite (scripts/test.sh) builds
# every test in that environment, and the image holds the node its end-to-end tests run.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-outpost:dev}"
bin="${OUTPOST_IMAGE_BINARY:-}"
if [[ -z "$bin" ]]; then
  source deploy/static-env.sh
  cargo build --release --locked -p outpost --bin outpost
  bin="target/$CARGO_BUILD_TARGET/release/outpost"
fi
if readelf -l "$bin" | grep -q "program interpreter"; then
  echo "$bin is not statically linked" >&2
  exit 1
fi
# What the Containerfile copies: the binary without symbols or debug information.
mkdir -p target/image
strip -o target/image/outpost "$bin"
podman --runtime runc build --quiet -t "$tag" -f deploy/Containerfile . >/dev/null
echo "built $tag ($(du -h target/image/outpost | cut -f1) binary from $bin)"
