#!/usr/bin/env bash
# What shapes the p99 of the `small` scenario under wrk besides the proxy's CPU per request:
# the order in which a proxy serves a connection. In the driver's layout (wrk -t1 -c50 on
# CPU 0; an nginx backend and the proxy under test on CPU 1, one worker each), each round runs
#
#   ringmesh            the proxy as it is
#   nginx               an nginx reverse proxy
#   relay               ringmesh-relay: two copy loops per connection, each with a read posted
#   relay+work          the same, burning WORK_NS of CPU on each message (request, answer)
#   sequential+work     one task per connection: request, upstream, answer, back, in turn; the
#                       next request is read only once the answer is written (as ringmesh does)
#
# and prints wrk's percentiles (p10 to p99.9, µs) and requests/s. With WORK_NS set so that the
# two models serve about ringmesh's requests/s (the same CPU per request), the difference
# between them is the cost of serving a connection in turn.
#
#   WORK_NS=400 bash perf/tail-structure.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-5}"
WORK_NS="${WORK_NS:-400}"

source perf/lib.sh
perf_setup
cargo build --release -q -p ringmesh-perf --bin ringmesh-relay

dir=$(mktemp -d); chmod 755 "$dir"
BE=$(free_port); RM=$(free_port); NG=$(free_port)
RELAY=$(free_port); WORK=$(free_port); SEQ=$(free_port)
wrk_percentiles_lua > "$dir/pct.lua"
backend_conf "$dir" "$BE" > "$dir/backend.conf"
chmod 644 "$dir"/*

pids=()
cleanup() { kill_all "${pids[@]}"; rm -rf "$dir"; }
trap cleanup EXIT
taskset -c 1 nginx -c "$dir/backend.conf" & pids+=($!)
start_nginx_and_ringmesh "$dir" "$NG" "$RM" "$BE"
relay() {
  local port=$1; shift
  target/release/ringmesh-relay --listen "127.0.0.1:$port" --upstream "127.0.0.1:$BE" --cpu 1 \
    "$@" >/dev/null & pids+=($!)
}
relay "$RELAY"
relay "$WORK" --work-ns "$WORK_NS"
relay "$SEQ" --work-ns "$WORK_NS" --sequential
sleep 1

echo "wrk -t1 -c50 -d${SECS}s on CPU 0; the backend and the proxy on CPU 1; work ${WORK_NS} ns"
for r in $(seq 1 "$ROUNDS"); do
  for target in ringmesh:$RM nginx:$NG relay:$RELAY relay+work:$WORK sequential+work:$SEQ; do
    port=${target##*:}
    taskset -c 0 wrk -t1 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null
    printf '%-16s' "${target%:*}"
    taskset -c 0 wrk -t1 -c50 -d"${SECS}s" -s "$dir/pct.lua" "http://127.0.0.1:$port/" 2>&1 >/dev/null
  done
done
