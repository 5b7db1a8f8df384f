#!/usr/bin/env bash
# Runs the benchmarks; results go to stdout (summaries and RESULT JSON lines).
#   bench/run.sh              all of them
#   bench/run.sh ingest       readings/s through the bus into core-data vs mosquitto's raw rate
#   bench/run.sh footprint    start-to-healthy time and idle memory of `outpost up`
#   bench/run.sh encoding     bytes per reading on the bus, JSON vs compact CBOR
#   bench/run.sh store        raw append rate of core-data's encrypted store
#   bench/run.sh modbus       polled values/s through device-modbus against pymodbus, batching
#                             on and off, vs pymodbus's own client on the same registers
#   bench/run.sh opcua        data changes/s from 1,000 OPC UA variables changing at 10 Hz,
#                             subscribed by device-opcua, stored in core-data, vs the rate
#                             the asyncua server publishes to an asyncua client
#   bench/run.sh coap         readings/s from 1,000 CoAP devices (confirmable CBOR POSTs)
#                             into core-data through device-coap, vs a bare aiocoap server
#                             answering the same datagrams
#   bench/run.sh mqtt-devices readings/s from 1,000 MQTT devices (own credentials) into
#                             core-data vs mosquitto's raw rate for the same messages, and
#                             the CPU each process spent per reading
#   bench/run.sh command      command round trip p50/p99 through core-command
#   bench/run.sh gateway      requests/s and p50/p99 through the gateway (TLS + JWT) vs nginx
#                             as a TLS reverse proxy to the same route, wrk as the client;
#                             latency added over calling the service directly; then the same
#                             with both reaching core-data over mutual TLS
#   bench/run.sh fleet        the cloud node's fleet queries on PostgreSQL with 3 million
#                             readings (newest page of an edge, of a device, one resource
#                             over an hour, a deep page, a day's window) against the same
#                             queries in their earlier form on the same data
#   bench/run.sh queue        the store-and-forward queue alone: appends with an fsync each,
#                             reopen, drain
#   bench/run.sh export       edge to cloud: enqueue rate (cloud down), drain rate, bytes on
#                             the wire per reading, device-to-cloud latency, data reduction
#   bench/run.sh journal      what the broker's durable acknowledgement costs: ingest and
#                             mqtt-devices with the journal on and off, alternating, three
#                             rounds each, with the broker's group commits (fsyncs) per second
#   bench/run.sh tls          what TLS on every hop costs: mqtt-devices (1,000 devices, over
#                             TLS with their secrets; the services over mutual TLS) and ingest
#                             (100 connections publishing over TLS as the administrator)
#                             against the same loads in plaintext, alternating, two rounds
#                             each, with the CPU the node spent per reading
#   bench/run.sh reconnect    1,000 MQTT devices (own secrets) connecting over TLS at once, three
#                             rounds: handshakes/s, time until all are back, connect p50/p99
#                             and server CPU per connect, against mosquitto over TLS with a
#                             password file of the same devices
#   bench/run.sh sandbox      what the services' sandbox (Landlock, seccomp) costs: ingest and
#                             the gateway with it on and off, alternating, two rounds each
#   bench/run.sh deploy       the container image's size (uncompressed and gzip), and the
#                             start-to-healthy time of the compose stack against `outpost up`
#                             (both fresh, until the gateway answers), three rounds
#   bench/run.sh fuzz         every fuzz target for an hour (FUZZ_SECONDS), with executions
#   bench/run.sh scale        core-data on PostgreSQL against SQLite with 1, 2 and 3 instances
#                             sharing the bus; the cloud node's ingest from 50 edges into 1 and
#                             2 instances on PostgreSQL; core-data through NATS JetStream
#                             against the embedded broker; CPU per reading of each part
#   bench/run.sh durability   the randomized kill -9 test of tests/e2e/durability.rs with 100
#                             kills instead of CI's 20 (OUTPOST_KILL_ROUNDS), under QoS 1 ingest,
#                             through device-mqtt and through device-rest
#   bench/run.sh support      support-notifications: notifications delivered/s to a webhook
#                             receiver vs that receiver's rate from a plain client, rules
#                             alert -> receiver latency p50/p99; support-scheduler: lateness
#                             of 1,000 interval jobs at 1 s vs the same timers in the driver
#   bench/run.sh console      the web console: bytes shipped for the first page (compressed)
#                             and the time from opening a device page to its first chart
#   bench/run.sh ota          200 devices downloading a 50 MiB artifact at once (through the
#                             gateway and direct): throughput, server CPU and RSS; polls/s
#                             of a 10,000-device fleet
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --bench >/dev/null
cargo build --release --locked -p outpost -p outpost-bench
B=target/release/outpost-bench
O=target/release/outpost
what="${1:-all}"

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), \
$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(date -u +%Y-%m-%d)"

run() { echo "== $*"; "$@"; }

if [[ $what == all || $what == ingest ]]; then
  # Three runs each: wall-clock figures on a shared 2-core machine are noisy.
  for i in 1 2 3; do run "$B" ingest --outpost "$O" --events 50000 --readings 10 --devices 100; done
  run "$B" ingest --outpost "$O" --events 50000 --readings 10 --devices 100 --encoding cbor
  run "$B" ingest --outpost "$O" --events 100000 --readings 1 --devices 100
fi
if [[ $what == all || $what == footprint ]]; then
  run "$B" footprint --outpost "$O" --runs 5 --idle-s 15
fi
if [[ $what == all || $what == encoding ]]; then
  run "$B" encoding
fi
if [[ $what == all || $what == store ]]; then
  run "$B" store --events 200000 --readings 10 --devices 100 --batch 1000
fi
if [[ $what == all || $what == modbus ]]; then
  # 10 devices x 100 values (150 contiguous registers) against one pymodbus server; two runs.
  for i in 1 2; do run "$B" modbus --outpost "$O" --devices 10 --resources 100 --seconds 5; done
fi
if [[ $what == all || $what == opcua ]]; then
  # 1,000 variables at 10 Hz, 10 devices x 100 monitored items; two runs.
  for i in 1 2; do run "$B" opcua --outpost "$O" --nodes 1000 --tick-ms 100 --devices 10 --seconds 10; done
fi
if [[ $what == all || $what == coap ]]; then
  # 1,000 CoAP devices, confirmable CBOR POSTs one at a time each, vs a bare aiocoap server; two runs.
  for i in 1 2; do run "$B" coap --outpost "$O" --devices 1000 --seconds 10; done
fi
if [[ $what == all || $what == mqtt-devices ]]; then
  # 1,000 devices x 20 messages x 10 values = 200,000 readings per run; three runs.
  for i in 1 2 3; do run "$B" mqtt-devices --outpost "$O" --devices 1000 --per-device 20 --readings 10; done
  run "$B" mqtt-devices --outpost "$O" --devices 1000 --per-device 20 --readings 10 --encoding cbor
fi
if [[ $what == all || $what == command ]]; then
  run "$B" command --outpost "$O" --requests 5000
fi
if [[ $what == all || $what == gateway ]]; then
  run "$B" gateway --outpost "$O" --seconds 10 --connections 50 --rounds 5
  # The same with TLS on every hop: both proxies reach core-data over mutual TLS.
  OUTPOST_BENCH_TLS=1 run "$B" gateway --outpost "$O" --seconds 10 --connections 50 --rounds 5
fi
if [[ $what == all || $what == queue ]]; then
  run "$B" queue --items 200000 --batch 100 --item-bytes 2300
fi
if [[ $what == all || $what == export ]]; then
  for i in 1 2; do run "$B" export --outpost "$O" --events 50000 --readings 10; done
fi
if [[ $what == all || $what == fleet ]]; then
  # 3 million readings from 10 edges (50 devices x 10 resources each) into a private
  # PostgreSQL through the cloud's store, then its queries against their earlier form.
  run "$B" fleet --readings 3000000 --edges 10 --devices 50 --resources 10 --repeats 20
fi
if [[ $what == all || $what == scale ]]; then
  # 50,000 events x 10 readings into core-data: SQLite, then PostgreSQL with 1, 2 and 3
  # instances (a private PostgreSQL 15, TLS, password); two rounds.
  for i in 1 2; do run "$B" scale-ingest --outpost "$O" --events 50000 --readings 10 --devices 100 --instances 3 --connections 100; done
  # 50 edges x 10 batches x 200 events x 10 readings (1,000,000 readings) into 1 and 2
  # cloud instances sharing a private PostgreSQL; two rounds.
  for i in 1 2; do run "$B" scale-cloud --outpost "$O" --edges 50 --batches 10 --batch 200 --readings 10 --instances 2; done
  # 50,000 events x 10 readings into core-data (SQLite) through the embedded broker and
  # through NATS JetStream (nats-server with TLS and a password); two rounds.
  for i in 1 2; do run "$B" bus-ingest --outpost "$O" --events 50000 --readings 10 --devices 100; done
fi
if [[ $what == all || $what == console ]]; then
  # The web console in Debian's chromium: first page bytes (compressed) and the time to the
  # first chart, five rounds.
  run bench/console.sh
fi
if [[ $what == all || $what == journal ]]; then
  # The same load with the journal on and off, alternating which goes first: 100 devices
  # on their own connections (two rounds), one connection for all of them (the worst case:
  # the broker takes one connection's messages one after another), and 1,000 MQTT devices
  # through device-mqtt (two rounds).
  both() {
    local first=on second=off
    [[ $1 == off-first ]] && first=off second=on
    shift
    for j in $first $second; do
      if [[ $j == on ]]; then run "$@"; else OUTPOST_BROKER__JOURNAL=false run "$@"; fi
    done
  }
  ingest=("$B" ingest --outpost "$O" --events 50000 --readings 10 --devices 100)
  both on-first "${ingest[@]}" --connections 100
  both off-first "${ingest[@]}" --connections 100
  both on-first "${ingest[@]}" --connections 1
  devices=("$B" mqtt-devices --outpost "$O" --devices 1000 --per-device 20 --readings 10)
  both on-first "${devices[@]}"
  both off-first "${devices[@]}"
fi
if [[ $what == all || $what == sandbox ]]; then
  first=$((RANDOM % 2))
  for round in 1 2; do
    for s in $first $((1 - first)); do
      echo "== sandbox $([[ $s == 1 ]] && echo on || echo off)"
      OUTPOST_BENCH_SANDBOX=$s run "$B" ingest --outpost "$O" --events 50000 --readings 10 --devices 100 --connections 100
    done
    for s in $first $((1 - first)); do
      echo "== sandbox $([[ $s == 1 ]] && echo on || echo off)"
      OUTPOST_BENCH_SANDBOX=$s run "$B" gateway --outpost "$O" --seconds 10 --connections 50 --rounds 1
    done
  done
fi
if [[ $what == all || $what == deploy ]]; then
  bench/deploy.sh "$O"
fi
if [[ $what == all || $what == tls ]]; then
  devices=("$B" mqtt-devices --outpost "$O" --devices 1000 --per-device 20 --readings 10)
  ingest=("$B" ingest --outpost "$O" --events 50000 --readings 10 --devices 100 --connections 100)
  for first in 1 0; do
    for t in $first $((1 - first)); do OUTPOST_BENCH_TLS=$t run "${devices[@]}"; done
    for t in $first $((1 - first)); do OUTPOST_BENCH_TLS=$t run "${ingest[@]}"; done
  done
fi
if [[ $what == all || $what == reconnect ]]; then
  # 1,000 devices with their own secrets connecting over TLS at once, three rounds, against
  # mosquitto over TLS with a password file of the same devices.
  OUTPOST_BENCH_TLS=1 run "$B" reconnect --outpost "$O" --devices 1000 --rounds 3
fi
if [[ $what == fuzz ]]; then
  run scripts/fuzz.sh "${FUZZ_SECONDS:-3600}"
fi
if [[ $what == durability ]]; then
  OUTPOST_KILL_ROUNDS=100 run cargo nextest run --locked -p outpost --no-capture \
    durability::no_acknowledged_event_is_lost_or_stored_twice
  OUTPOST_KILL_ROUNDS=100 run cargo nextest run --locked -p outpost --no-capture \
    durability::device_mqtt_telemetry
  OUTPOST_KILL_ROUNDS=100 run cargo nextest run --locked -p outpost --no-capture \
    durability::device_rest_answers_2xx_only
fi
if [[ $what == all || $what == support ]]; then
  for i in 1 2; do run "$B" notifications --outpost "$O" --count 10000 --alerts 200; done
  for i in 1 2; do run "$B" scheduler --outpost "$O" --jobs 1000 --seconds 30; done
fi
if [[ $what == all || $what == ota ]]; then
  run "$B" ota --outpost "$O" --agents 200 --mib 50 --fleet 10000 --pollers 64 --seconds 10
fi
