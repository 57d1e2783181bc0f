#!/usr/bin/env bash
# Where the p99 of the `small` scenario under wrk comes from. The layout of the comparison
# driver: wrk (-t1 -c50) on CPU 0; an nginx backend and the proxy under test (ringmesh, or an
# nginx reverse proxy) share CPU 1, one worker each. Each round runs both proxies twice: with
# the backend as an ordinary task, as in the driver, and with the backend in SCHED_BATCH, whose
# wake-ups do not preempt the running task (the proxy then finishes the batch of requests it is
# working on before the backend runs). Prints wrk's percentiles (p10 to p99.9, µs) and
# requests/s for each run.
#
# With an ordinary backend, the backend woken by the proxy's writes preempts the proxy in the
# middle of its batch, and the requests left in the batch wait a whole backend turn: the slow
# mode of the distribution (p90 and above), which sets p99 for every proxy alike. Without that
# preemption the distribution is narrow, and the p99s part by each proxy's CPU per request.
#
#   bash perf/tail-preemption.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-5}"

source perf/lib.sh
perf_setup

dir=$(mktemp -d); chmod 755 "$dir"
BE=$(free_port); NG=$(free_port); RM=$(free_port)
wrk_percentiles_lua > "$dir/pct.lua"
chmod 644 "$dir"/*

pids=()
cleanup() { kill_all "${pids[@]}"; rm -rf "$dir"; }
trap cleanup EXIT
start_nginx_and_ringmesh "$dir" "$NG" "$RM" "$BE"

# Starts the backend with the given scheduling policy (`other` or `batch`); its pid in $BE_PID.
backend() {
  [ -z "${BE_PID:-}" ] || { kill_all "$BE_PID"; sleep 0.3; }
  backend_conf "$dir/$1" "$BE" > "$dir/backend-$1.conf"
  taskset -c 1 chrt "--$1" 0 nginx -c "$dir/backend-$1.conf" & BE_PID=$!
  pids+=("$BE_PID")
  sleep 0.5
}
run() {
  printf '%-9s backend %-6s' "$1" "$2"
  taskset -c 0 wrk -t1 -c50 -d"${SECS}s" -s "$dir/pct.lua" "http://127.0.0.1:$3/" 2>&1 >/dev/null
}

echo "wrk -t1 -c50 -d${SECS}s on CPU 0; the backend and the proxy on CPU 1"
mkdir -p "$dir/other" "$dir/batch"
for r in $(seq 1 "$ROUNDS"); do
  for policy in other batch; do
    backend "$policy"
    for port in "$RM" "$NG"; do taskset -c 0 wrk -t1 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null; done
    run ringmesh "$policy" "$RM"
    run nginx "$policy" "$NG"
  done
done
