#!/usr/bin/env bash
# Installs what building and running Outpost needs on Debian/Ubuntu.
#   scripts/setup.sh          build and run dependencies
#   scripts/setup.sh --test   plus the real peers the tests talk to (mosquitto)
set -euo pipefail

packages=(pkg-config libssl-dev)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(mosquitto mosquitto-clients)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  echo "Installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
if [[ "${1:-}" == "--test" ]] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "Installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi
