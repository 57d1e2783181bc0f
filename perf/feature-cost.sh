#!/usr/bin/env bash
# What a feature costs per request: two ringmesh proxies, "off" without it and "on" with it,
# measured with wrk in interleaved rounds. By default the feature is access logging (every
# request to a file); WHAT says which other (below). wrk on CPU 0; the proxy
# under test and a 1-worker nginx backend (2-byte answer) on CPU 1; one worker each; 50
# keep-alive connections. Prints requests/s, CPU per request (the whole proxy, then its worker
# thread and its log writer thread) and the ratio of the two: of the medians, and the median
# of each round's own ratio (rounds run off-on, then on-off, so drift cancels out).
#
#   bash perf/feature-cost.sh [ROUNDS] [SECONDS]
#
# LOG_DIR=/dev/shm puts the log on tmpfs, which takes the disk out of the measurement (on a
# virtual machine, its I/O also costs the host CPU time that the guest does not see).
#
# WHAT=spans measures span export instead: "on" exports a span per request (`tracing`, 100%
# sampled: each request is sent with a sampled `traceparent`) to a collector stand-in, an nginx on
# CPU 0 that answers every post 200; the second thread measured is the span exporter.
#
# WHAT=edits: "on" is a route that adds two request fields (one a variable) and rewrites its
# path prefix; "off" the same route without them.
#
# WHAT=binary OLD_BIN=path: "off" is OLD_BIN (a release binary built from an earlier commit),
# "on" this tree's, with the same plain route: what a change costs a route that uses none of
# what it adds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-4}"
SECS="${2:-10}"

source perf/lib.sh
perf_setup

dir=$(mktemp -d)
BE=$(free_port); OFF=$(free_port); ON=$(free_port)
backend_conf "$dir" "$BE" > "$dir/backend.conf"
config() { # port, extra listener line, extra route fields
  cat <<EOC
admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:$1
$2
    routes: [ { match: { path_prefix: / }, cluster: be ${3:-} } ]
clusters:
  - { name: be, endpoints: [ { addr: 127.0.0.1:$BE } ] }
EOC
}
config "$OFF" "" > "$dir/off.yaml"
logdir=$(mktemp -d -p "${LOG_DIR:-$dir}")
WHAT="${WHAT:-log}"
OFF_BIN=target/release/ringmesh
ON_BIN=target/release/ringmesh
if [ "$WHAT" = edits ]; then
  config "$ON" "" ', request_headers: { add: { x-a: "1", x-b: "${client_ip}" } }, rewrite: { prefix: /v2/ }' > "$dir/on.yaml"
  THREAD=none
  WRK_ARGS=()
elif [ "$WHAT" = binary ]; then
  OFF_BIN="${OLD_BIN:?WHAT=binary needs OLD_BIN=path-to-an-earlier-release-binary}"
  config "$ON" "" > "$dir/on.yaml"
  THREAD=none
  WRK_ARGS=()
elif [ "$WHAT" = spans ]; then
  SINK=$(free_port); mkdir -p "$dir/sink"
  backend_conf "$dir/sink" "$SINK" | sed 's/access_log off;/access_log off; client_max_body_size 16m;/' > "$dir/sink.conf"
  { echo "tracing: { otlp: \"http://127.0.0.1:$SINK/v1/traces\", sample: 100% }"; config "$ON" ""; } > "$dir/on.yaml"
  THREAD=ringmesh-spans
  # Every request carries a sampled context: each one is exported.
  WRK_ARGS=(-H "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
else
  config "$ON" "    access_log: $logdir/access.log" > "$dir/on.yaml"
  THREAD=ringmesh-log
  WRK_ARGS=()
fi

pids=()
cleanup() { kill_all "${pids[@]}"; rm -rf "$dir"; }
trap 'cleanup; rm -rf "$logdir"' EXIT
taskset -c 1 nginx -c "$dir/backend.conf" & pids+=($!)
[ "$WHAT" = spans ] && { taskset -c 0 nginx -c "$dir/sink.conf" & pids+=($!); }
taskset -c 1 "$OFF_BIN" proxy --config "$dir/off.yaml" --workers 1 --log-level warn & pids+=($!)
OFF_PID=$!
ON_ADMIN=$(free_port)
taskset -c 1 "$ON_BIN" proxy --config "$dir/on.yaml" --workers 1 --log-level warn --admin "127.0.0.1:$ON_ADMIN" & pids+=($!)
ON_PID=$!
sleep 1

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks of the process's thread named $2 (0 if it has none): the worker, and the log writer.
thread_cpu() {
  local t
  for t in /proc/"$1"/task/*; do
    [ "$(cat "$t/comm")" = "$2" ] && { awk '{print $14 + $15}' "$t/stat"; return; }
  done
  echo 0
}
declare -A RPS CPU LAST
RATIOS=""
run() {
  local name=$1 port=$2 pid=$3 c0 c1 w0 w1 l0 l1 out rps reqs
  c0=$(cpu "$pid"); w0=$(thread_cpu "$pid" ringmesh-w0); l0=$(thread_cpu "$pid" "$THREAD")
  out=$(taskset -c 0 wrk -t1 -c50 -d"${SECS}s" "${WRK_ARGS[@]}" "http://127.0.0.1:$port/")
  c1=$(cpu "$pid"); w1=$(thread_cpu "$pid" ringmesh-w0); l1=$(thread_cpu "$pid" "$THREAD")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local us split
  us=$(awk -v c="$((c1 - c0))" -v q="$reqs" 'BEGIN { printf "%.2f", c * 10000 / q }')
  split=$(awk -v w="$((w1 - w0))" -v l="$((l1 - l0))" -v q="$reqs" \
    'BEGIN { printf "(worker %.2f, log writer or exporter %.2f)", w * 10000 / q, l * 10000 / q }')
  printf "%-8s %10.0f req/s   %5s us CPU/request %s\n" "$name" "$rps" "$us" "$split"
  RPS[$name]="${RPS[$name]:-} $rps"; CPU[$name]="${CPU[$name]:-} $us"
  LAST[$name]=$rps
}
echo "wrk -t1 -c50 -d${SECS}s on CPU 0; proxy and nginx backend on CPU 1; measuring: $WHAT"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then run off "$OFF" "$OFF_PID"; run on "$ON" "$ON_PID"
  else run on "$ON" "$ON_PID"; run off "$OFF" "$OFF_PID"; fi
  # Each round's own ratio: the machine's drift between rounds cancels out.
  RATIOS="$RATIOS $(awk -v a="${LAST[on]}" -v b="${LAST[off]}" 'BEGIN { print a / b }')"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
off_rps=$(echo "${RPS[off]}" | median); on_rps=$(echo "${RPS[on]}" | median)
off_cpu=$(echo "${CPU[off]}" | median); on_cpu=$(echo "${CPU[on]}" | median)
round_ratio=$(echo "$RATIOS" | median)
if [ "$WHAT" = spans ]; then
  lines=$(curl -s "http://127.0.0.1:$ON_ADMIN/metrics" | awk '/^ringmesh_spans_total\{result="exported"\}/ {print $2}')
  echo "spans: $(curl -s "http://127.0.0.1:$ON_ADMIN/metrics" | grep '^ringmesh_spans_total' | tr '\n' ' ')"
elif [ "$WHAT" = log ]; then
  lines=$(wc -l < "$logdir/access.log")
else
  lines=0
fi
awk -v a="$off_rps" -v b="$on_rps" -v c="$off_cpu" -v d="$on_cpu" -v n="$lines" -v r="$round_ratio" 'BEGIN {
  printf "medians: off %.0f req/s %.2f us; on %.0f req/s %.2f us; on/off req/s %.3f, CPU %.3f; median of per-round on/off req/s %.3f; %d lines logged or spans exported\n", a, c, b, d, b / a, d / c, r, n }'
