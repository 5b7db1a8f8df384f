#!/usr/bin/env bash
# Installs Outpost as a hardened systemd service on this machine, in one command:
#   sudo deploy/systemd/install.sh
# Builds the release binary, installs it as /usr/local/bin/outpost, creates the system
# user `outpost` (in dialout and tss where those exist: serial lines, the TPM), writes the
# documented default configuration to /etc/outpost/outpost.toml unless one is there,
# installs deploy/systemd/outpost.service and starts it.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $(id -u) -ne 0 ]]; then
  echo "run as root (sudo $0)" >&2
  exit 1
fi
scripts/setup.sh
cargo build --release --locked -p outpost --bin outpost
install -m 0755 target/release/outpost /usr/local/bin/outpost
if ! id outpost >/dev/null 2>&1; then
  groups=()
  for g in dialout tss; do getent group "$g" >/dev/null && groups+=("$g"); done
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "Outpost edge node" \
    ${groups:+--groups "$(IFS=,; echo "${groups[*]}")"} outpost
fi
install -d -m 0750 -o root -g outpost /etc/outpost
if [[ ! -e /etc/outpost/outpost.toml ]]; then
  /usr/local/bin/outpost config default > /etc/outpost/outpost.toml
  chown root:outpost /etc/outpost/outpost.toml
  chmod 0640 /etc/outpost/outpost.toml
fi
install -m 0644 deploy/systemd/outpost.service /etc/systemd/system/outpost.service
systemctl daemon-reload
systemctl enable --now outpost.service
echo "Outpost runs: systemctl status outpost; journalctl -u outpost"
echo "Administrator password: sudo cat /var/lib/outpost/secrets/admin-password"
