#!/usr/bin/env bash
# The deployment figures of docs/deploy.md (called by bench/run.sh deploy):
# - the container image's size, uncompressed and as gzip (what a registry transfers);
# - start-to-healthy of the edge node, fresh (keys, CA, databases made): `outpost up` on
#   this host against the compose stack (one container per service), each until the
#   gateway answers on HTTPS, three rounds alternating.
#   bench/deploy.sh target/release/outpost
set -euo pipefail
cd "$(dirname "$0")/.."
O="${1:-target/release/outpost}"
deploy/build-image.sh >/dev/null
image=localhost/outpost:dev
size=$(podman image inspect "$image" --format '{{.Size}}')
gz=$(podman save "$image" 2>/dev/null | gzip -9 | wc -c)
echo "image $image: $((size / 1000000)) MB uncompressed, $((gz / 1000000)) MB gzip"
echo "RESULT {\"bench\":\"image\",\"bytes\":$size,\"gzip_bytes\":$gz}"

compose=target/peers/podman-compose/bin/podman-compose
export CONTAINERS_CONF="$PWD/tests/peers/containers.conf"
[[ -x $compose ]] || scripts/setup.sh --test >/dev/null

now_ms() { date +%s%3N; }
# Waits until the gateway at port $1 answers its ping; prints the milliseconds since $2.
healthy_after() {
  local port=$1 t0=$2
  for _ in $(seq 1 3000); do
    if curl -skf --max-time 1 "https://127.0.0.1:$port/api/v3/ping" >/dev/null 2>&1; then
      echo $(($(now_ms) - t0))
      return
    fi
    sleep 0.02
  done
  echo "the gateway on $port never answered" >&2
  return 1
}

for round in 1 2 3; do
  # outpost up, fresh data dir, its own ports.
  dir=$(mktemp -d /tmp/outpost-deploy-XXXXXX)
  chmod 711 "$dir"
  t0=$(now_ms)
  "$O" --data-dir "$dir/data" --set gateway.listen=127.0.0.1:28443 --set broker.tls_listen=127.0.0.1:28883 \
    --set broker.listen=127.0.0.1:28830 up >"$dir/log" 2>&1 &
  pid=$!
  up_ms=$(healthy_after 28443 "$t0")
  kill -TERM $pid
  wait $pid || true
  rm -rf "$dir"

  # The compose stack, fresh volume.
  project="outpost-bench-$$-$round"
  export OUTPOST_PUBLISH_ADDR=127.0.0.1 OUTPOST_HTTPS_PORT=28444 OUTPOST_MQTTS_PORT=28884
  t0=$(now_ms)
  "$compose" --podman-args="--runtime runc" -p "$project" -f deploy/compose.yaml up -d >/dev/null 2>&1
  compose_ms=$(healthy_after 28444 "$t0")
  "$compose" --podman-args="--runtime runc" -p "$project" -f deploy/compose.yaml down -v >/dev/null 2>&1 || true
  podman volume rm -f "${project}_data" >/dev/null 2>&1 || true

  echo "round $round: outpost up healthy in $up_ms ms, compose stack in $compose_ms ms"
  echo "RESULT {\"bench\":\"start-to-healthy\",\"round\":$round,\"outpost_up_ms\":$up_ms,\"compose_ms\":$compose_ms}"
done
