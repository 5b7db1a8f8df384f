#!/usr/bin/env bash
# The console's figures (web/e2e/bench.mjs): a node from target/release/outpost with
# device-virtual in a temporary data dir on the default ports, a device read every second
# and ten read ten times a second, then the browser's measurements through the gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
O=target/release/outpost
data=$(mktemp -d)
log="$data.log"
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data" "$log"' EXIT
# The data dir must be empty for a first start: the node's log goes beside it.
"$O" --data-dir "$data" --set device_virtual.enabled=true up >"$log" 2>&1 &
pid=$!
ca="$data/tls/ca.pem"
for _ in $(seq 1 100); do
  curl -sf --cacert "$ca" https://127.0.0.1:8443/api/v3/ping >/dev/null 2>&1 && break
  sleep 0.2
done
admin=$(cat "$data/secrets/admin-password")
token=$(curl -sf --cacert "$ca" https://127.0.0.1:8443/api/v3/auth/login \
  -d "{\"username\":\"admin\",\"password\":\"$admin\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')
for _ in $(seq 1 100); do
  curl -sf --cacert "$ca" -H "Authorization: Bearer $token" \
    https://127.0.0.1:8443/core-metadata/api/v3/deviceprofile/name/Random-Integer-Device >/dev/null && break
  sleep 0.2
done
curl -sf --cacert "$ca" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  https://127.0.0.1:8443/core-metadata/api/v3/device -d '[{"apiVersion":"v3","device":{
    "name":"bench-1","profileName":"Random-Integer-Device","serviceName":"device-virtual",
    "adminState":"UNLOCKED","operatingState":"UP","protocols":{"other":{}},
    "autoEvents":[{"interval":"1s","onChange":false,"sourceName":"Int8"}]}}]' >/dev/null
# Ten more, each read ten times a second, for the page that follows them.
follow=()
for i in $(seq 1 10); do
  curl -sf --cacert "$ca" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    https://127.0.0.1:8443/core-metadata/api/v3/device -d '[{"apiVersion":"v3","device":{
      "name":"follow-'"$i"'","profileName":"Random-Integer-Device","serviceName":"device-virtual",
      "adminState":"UNLOCKED","operatingState":"UP","protocols":{"other":{}},
      "autoEvents":[{"interval":"100ms","onChange":false,"sourceName":"Int8"}]}}]' >/dev/null
  follow+=("follow-$i")
done
sleep 3
(cd web && OUTPOST_URL=https://127.0.0.1:8443 OUTPOST_ADMIN="$admin" OUTPOST_DEVICE=bench-1 \
  OUTPOST_FOLLOW="$(IFS=,; echo "${follow[*]}")" node e2e/bench.mjs)
