#!/usr/bin/env bash
# Installs what building and running Outpost needs on Debian/Ubuntu.
#   scripts/setup.sh          build and run dependencies
#   scripts/setup.sh --test   plus the real peers the tests talk to (mosquitto, nats-server,
#                             PostgreSQL, tcpdump, swtpm as
#                             the TPM with tpm2-tools, podman with runc and podman-compose for
#                             the container image, systemd-analyze for the unit, and pymodbus,
#                             schemathesis, kubernetes-validate and aiosmtpd in virtualenvs under
#                             target/peers/)
#   scripts/setup.sh --bench  plus the benchmarks' peers (nginx, wrk)
# Every mode builds the web console (web/, with Node.js and npm) that the gateway serves.
# Installing Debian packages needs root; as another user the script uses sudo.
set -euo pipefail

# A C compiler and OpenSSL headers build the bundled SQLCipher. The README's first ten
# minutes also use mosquitto's clients, curl and a Python virtual environment.
packages=(gcc libc6-dev pkg-config libssl-dev mosquitto-clients curl python3 python3-venv)
if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  packages+=(mosquitto tcpdump swtpm tpm2-tools)
  # A real PostgreSQL for the services' PostgreSQL backend (one server per test run), and a
  # real NATS server with JetStream for the bus on NATS (each test starts its own).
  packages+=(postgresql nats-server)
  # Containers (deploy/): podman runs them here with runc; the static binary of the image
  # links OpenSSL's libcrypto from its archive (libssl-dev).
  # catatonit: the pause process of the pods `podman kube play` makes; netavark and
  # aardvark-dns: container networks where containers find each other by name; iptables:
  # the firewall netavark sets a network's rules with (only suggested by its package).
  packages+=(podman runc uidmap catatonit netavark aardvark-dns iptables)
  command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
  command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
  # The console's browser tests drive Debian's chromium (tests/e2e/console.rs).
  packages+=(chromium)
  # libcoap's coap-client: a CoAP device of device-coap's tests (tests/e2e/coap.rs).
  packages+=(libcoap3-bin)
fi
# The web console is built with Node.js and npm: Debian's only where there is none, so a
# newer Node.js already installed stays.
if ! command -v node >/dev/null 2>&1; then
  packages+=(nodejs)
fi
if ! command -v npm >/dev/null 2>&1; then
  packages+=(npm)
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
  # Likewise nats-server (4222): the tests start their own.
  if [[ " ${missing[*]} " == *" nats-server "* ]] && command -v systemctl >/dev/null 2>&1 &&
    systemctl is-active --quiet nats-server 2>/dev/null; then
    $sudo systemctl disable --now nats-server >/dev/null 2>&1 || true
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

# A Python peer pinned in a virtualenv of its own under target/peers, linked as
# target/peers/<name>; quick when already installed.
#   pinned_venv NAME DISTRIBUTION VERSION [MORE PIP REQUIREMENTS...]
pinned_venv() {
  local name=$1 dist=$2 version=$3
  shift 3
  local peers venv
  peers="$(cd "$(dirname "$0")/.." && pwd)/target/peers"
  venv="$peers/$name-$version"
  if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$dist') != '$version')" 2>/dev/null; then
    echo "Installing $dist $version into $venv"
    # Debian's interpreter, whose venv module python3-venv provides.
    local python=/usr/bin/python3
    [[ -x $python ]] || python=python3
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$dist==$version" "$@"
  fi
  ln -sfn "$name-$version" "$peers/$name"
}

if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  # The Modbus peer: pymodbus (and pyserial: the RTU test serves over a pseudo-terminal).
  # The tests and the benchmark (tests/e2e/modbus.rs, bench/loadgen/src/modbus.rs) run
  # target/peers/pymodbus/bin/python.
  pinned_venv pymodbus pymodbus 3.16.1 "pyserial==3.5"
fi

if [[ "${1:-}" == "--test" ]]; then
  # The README's quick start installs pymodbus with pip; its test (tests/e2e/readme.rs)
  # lets pip take it from here instead of the network.
  wheels="$(cd "$(dirname "$0")/.." && pwd)/target/peers/wheels"
  if ! ls "$wheels"/pymodbus-3.16.1-*.whl >/dev/null 2>&1; then
    echo "Downloading the pymodbus wheel for the README's test"
    "$(dirname "$0")/../target/peers/pymodbus/bin/pip" download --quiet \
      --disable-pip-version-check --no-deps --dest "$wheels" "pymodbus==3.16.1"
  fi
fi

if [[ "${1:-}" == "--test" ]]; then
  # The API property tests' client (tests/e2e/api_properties.rs runs
  # target/peers/schemathesis/bin/schemathesis).
  pinned_venv schemathesis schemathesis 4.32.5
  # The Kubernetes manifests' offline schema check (deploy/kubernetes): kubernetes-validate
  # carries the API schemas, so it needs no cluster.
  pinned_venv kubernetes-validate kubernetes-validate 1.37.0
  # The SMTP server of the notification tests (tests/peers/smtp_server.py).
  pinned_venv aiosmtpd aiosmtpd 1.4.6
  # The OPC UA server device-opcua's tests and benchmark talk to (tests/peers/opcua_server.py).
  pinned_venv asyncua asyncua 2.1.0
  # aiocoap (and cbor2 for its CBOR payloads): the other CoAP client of device-coap's tests.
  pinned_venv aiocoap aiocoap 0.4.17 "cbor2==6.3.0"
  # podman-compose from PyPI: Debian's 1.0.3 runs every health check through /bin/sh,
  # which an image without a shell does not have.
  pinned_venv podman-compose podman-compose 1.6.0
fi

# The web console: its dependencies from the committed lock file, then its build (web/dist,
# which the gateway's build takes into the binary).
web="$(cd "$(dirname "$0")/.." && pwd)/web"
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 18)); then
  echo "Node.js $(node --version) is too old for the console's build: it needs 18 or newer" >&2
  exit 1
fi
if [[ ! -f "$web/node_modules/.package-lock.json" || "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]]; then
  echo "Installing the console's dependencies (npm ci)"
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
if [[ ! -f "$web/dist/index.html" ]] || [[ -n "$(find "$web/src" "$web/index.html" "$web/package-lock.json" "$web/vite.config.ts" -newer "$web/dist/index.html" -print -quit)" ]]; then
  echo "Building the web console"
  (cd "$web" && npm run --silent build)
fi
