#!/usr/bin/env bash
# Installs what building and running Outpost needs on Debian/Ubuntu.
#   scripts/setup.sh          build and run dependencies
#   scripts/setup.sh --test   plus the real peers the tests talk to (mosquitto, tcpdump, swtpm as
#                             the TPM with tpm2-tools, podman with runc and podman-compose for
#                             the container image, systemd-analyze for the unit, and pymodbus,
#                             schemathesis, kubernetes-validate and aiosmtpd in virtualenvs under
#                             target/peers/)
#   scripts/setup.sh --bench  plus the benchmarks' peers (nginx, wrk)
# Installing Debian packages needs root; as another user the script uses sudo.
set -euo pipefail

# A C compiler and OpenSSL headers build the bundled SQLCipher.
packages=(gcc libc6-dev pkg-config libssl-dev)
if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  packages+=(mosquitto mosquitto-clients python3 python3-venv curl tcpdump swtpm tpm2-tools)
  # Containers (deploy/): podman runs them here with runc; the static binary of the image
  # links OpenSSL's libcrypto from its archive (libssl-dev).
  # catatonit: the pause process of the pods `podman kube play` makes; netavark and
  # aardvark-dns: container networks where containers find each other by name.
  packages+=(podman runc uidmap catatonit netavark aardvark-dns)
  command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
  command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
fi
# The benchmarks' peers: nginx (the gateway's reference) and wrk (the HTTP load generator).
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(nginx wrk)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
if ((${#missing[@]})); then
  echo "Installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a system-wide mosquitto on 1883, the node's MQTT port. The tests start
  # their own brokers on free ports; the system one would only be in the way.
  if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1 &&
    systemctl is-active --quiet mosquitto 2>/dev/null; then
    echo "Stopping and disabling the system mosquitto service (it holds port 1883)"
    $sudo systemctl disable --now mosquitto >/dev/null 2>&1 || true
  fi
  # Likewise nginx: the benchmark starts its own, on a free port.
  if [[ " ${missing[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null 2>&1 &&
    systemctl is-active --quiet nginx 2>/dev/null; then
    $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust 1.95 or newer (https://rustup.rs) first" >&2
  exit 1
fi
need="1.95"
have=$(rustc --version | awk '{print $2}')
if [[ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]]; then
  echo "Rust $have is too old: Outpost needs $need or newer (rustup update stable)" >&2
  exit 1
fi
if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
      if command -v rustup >/dev/null 2>&1; then
        echo "Installing the $component component"
        rustup component add "$component" >/dev/null
      else
        echo "cargo $component is missing and rustup is not there to add it" >&2
        exit 1
      fi
    fi
  done
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "Installing cargo-nextest"
    cargo install --locked cargo-nextest >/dev/null
  fi
  # Fuzzing (scripts/fuzz.sh): cargo fuzz and the nightly toolchain it builds with.
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "Installing cargo-fuzz"
    cargo install --locked cargo-fuzz >/dev/null
  fi
  if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "Installing the nightly toolchain (cargo fuzz needs it)"
    rustup toolchain install nightly --profile minimal >/dev/null
  fi
fi

if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  # The Modbus peer: pymodbus (and pyserial), pinned, in a virtualenv. The tests and the benchmark
  # (tests/e2e/modbus.rs, bench/loadgen/src/modbus.rs) run target/peers/pymodbus/bin/python.
  # Quick when already installed.
  pymodbus_version="3.16.1"
  peers="$(cd "$(dirname "$0")/.." && pwd)/target/peers"
  venv="$peers/pymodbus-$pymodbus_version"
  if ! "$venv/bin/python" -c "import pymodbus, serial, sys; sys.exit(pymodbus.__version__ != '$pymodbus_version')" 2>/dev/null; then
    echo "Installing pymodbus $pymodbus_version into $venv"
    # Debian's interpreter, whose venv module python3-venv provides.
    python=/usr/bin/python3
    [[ -x $python ]] || python=python3
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # pyserial: the RTU test serves over a pseudo-terminal.
    "$venv/bin/pip" install --quiet --disable-pip-version-check "pymodbus==$pymodbus_version" "pyserial==3.5"
  fi
  ln -sfn "pymodbus-$pymodbus_version" "$peers/pymodbus"
fi

if [[ "${1:-}" == "--test" ]]; then
  # The API property tests' client: schemathesis, pinned, in its own virtualenv
  # (tests/e2e/api_properties.rs runs target/peers/schemathesis/bin/schemathesis).
  schemathesis_version="4.32.5"
  peers="$(cd "$(dirname "$0")/.." && pwd)/target/peers"
  venv="$peers/schemathesis-$schemathesis_version"
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
    echo "Installing schemathesis $schemathesis_version into $venv"
    python=/usr/bin/python3
    [[ -x $python ]] || python=python3
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
  fi
  ln -sfn "schemathesis-$schemathesis_version" "$peers/schemathesis"

  # The Kubernetes manifests' offline schema check (deploy/kubernetes): kubernetes-validate
  # carries the API schemas, so it needs no cluster.
  kv_version="1.37.0"
  venv="$peers/kubernetes-validate-$kv_version"
  if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$kv_version"; then
    echo "Installing kubernetes-validate $kv_version into $venv"
    python=/usr/bin/python3
    [[ -x $python ]] || python=python3
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kv_version"
  fi
  ln -sfn "kubernetes-validate-$kv_version" "$peers/kubernetes-validate"

  # The SMTP server of the notification tests (tests/peers/smtp_server.py): aiosmtpd.
  aiosmtpd_version="1.4.6"
  venv="$peers/aiosmtpd-$aiosmtpd_version"
  if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('aiosmtpd') != '$aiosmtpd_version')" 2>/dev/null; then
    echo "Installing aiosmtpd $aiosmtpd_version into $venv"
    python=/usr/bin/python3
    [[ -x $python ]] || python=python3
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$aiosmtpd_version"
  fi
  ln -sfn "aiosmtpd-$aiosmtpd_version" "$peers/aiosmtpd"

  # podman-compose from PyPI: Debian's 1.0.3 runs every health check through /bin/sh,
  # which an image without a shell does not have.
  pc_version="1.6.0"
  venv="$peers/podman-compose-$pc_version"
  if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('podman-compose') != '$pc_version')" 2>/dev/null; then
    echo "Installing podman-compose $pc_version into $venv"
    python=/usr/bin/python3
    [[ -x $python ]] || python=python3
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "podman-compose==$pc_version"
  fi
  ln -sfn "podman-compose-$pc_version" "$peers/podman-compose"
fi
