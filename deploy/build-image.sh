#!/usr/bin/env bash
# Builds the container image outpost:dev (deploy/Containerfile) from a statically linked,
# stripped release binary. Needs podman with runc (scripts/setup.sh --containers).
#   deploy/build-image.sh [TAG]
# OUTPOST_IMAGE_PROFILE picks the cargo profile (default release). The test suite builds
# with `image-test` (Cargo.toml): the same code, optimised less, which a CI machine builds
# in a fraction of the time a release's link-time optimisation takes.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-outpost:dev}"
profile="${OUTPOST_IMAGE_PROFILE:-release}"
# glibc linked in (crt-static), no debug information. SQLCipher's build asks for OpenSSL's
# libcrypto as a shared library; given a directory holding only its static archive
# (Debian's libssl-dev), the linker takes that.
crypto="$(gcc -print-file-name=libcrypto.a)"
if [[ ! -f "$crypto" ]]; then
  echo "libcrypto.a not found: install libssl-dev (scripts/setup.sh)" >&2
  exit 1
fi
mkdir -p target/static-libcrypto
cp -u "$crypto" target/static-libcrypto/
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols -C debuginfo=0" \
  OPENSSL_LIB_DIR="$PWD/target/static-libcrypto" OPENSSL_INCLUDE_DIR=/usr/include \
  cargo build --profile "$profile" --locked --target x86_64-unknown-linux-gnu -p outpost --bin outpost
bin=target/x86_64-unknown-linux-gnu/$profile/outpost
if readelf -l "$bin" | grep -q "program interpreter"; then
  echo "$bin is not statically linked" >&2
  exit 1
fi
# What the Containerfile copies, whichever profile built it.
mkdir -p target/image
cp "$bin" target/image/outpost
podman --runtime runc build --quiet -t "$tag" -f deploy/Containerfile . >/dev/null
echo "built $tag ($(du -h "$bin" | cut -f1) binary, profile $profile)"
