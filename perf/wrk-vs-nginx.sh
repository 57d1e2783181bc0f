#!/usr/bin/env bash
# ringmesh against an nginx reverse proxy, measured with wrk: wrk on CPU 0; the proxy under test
# and an nginx backend (one worker, 2-byte answer) on CPU 1; one worker each; 50 keep-alive
# connections. Rounds alternate the two proxies. Prints requests/s and the proxy's CPU time per
# request (user + system, from /proc) for each run; first, the backend on its own (wrk straight
# to it), the floor for a hop that reads and writes. When target/release/ringmesh-relay is built
# (cargo build --release -p ringmesh-perf), each round also runs through that bare relay: the
# floor for a proxy's CPU per request on this machine.
#
#   bash perf/wrk-vs-nginx.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-10}"

source perf/lib.sh
perf_setup

dir=$(mktemp -d)
BE=$(free_port); NG=$(free_port); RM=$(free_port); RL=$(free_port)
backend_conf "$dir" "$BE" > "$dir/backend.conf"
nginx_proxy_conf "$dir" "$NG" "$BE" > "$dir/proxy.conf"
ringmesh_proxy_yaml "$RM" "$BE" > "$dir/ringmesh.yaml"

pids=()
cleanup() { kill_all "${pids[@]}"; rm -rf "$dir"; }
trap cleanup EXIT
taskset -c 1 nginx -c "$dir/backend.conf" & pids+=($!)
taskset -c 1 nginx -c "$dir/proxy.conf" & pids+=($!)
taskset -c 1 target/release/ringmesh proxy --config "$dir/ringmesh.yaml" --workers 1 --log-level warn & pids+=($!)
RL_PID=
if [ -x target/release/ringmesh-relay ]; then
  taskset -c 1 target/release/ringmesh-relay --listen "127.0.0.1:$RL" --upstream "127.0.0.1:$BE" >/dev/null & pids+=($!)
  RL_PID=${pids[3]}
fi
sleep 1
BE_PID=${pids[0]}
NGINX_PID=${pids[1]}
RM_PID=${pids[2]}

# CPU seconds (user + system) of a process and its children threads/processes.
cpu() {
  local total=0
  for p in "$1" $(pgrep -P "$1" || true); do
    read -r ut st < <(awk '{print $14, $15}' "/proc/$p/stat")
    total=$((total + ut + st))
  done
  echo "$total"
}

run() {
  local name=$1 port=$2 pid=$3
  local c0 c1 out rps
  c0=$(cpu "$pid")
  out=$(taskset -c 0 wrk -t1 -c50 -d"${SECS}s" "http://127.0.0.1:$port/")
  c1=$(cpu "$pid")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local reqs
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local p99
  p99=$(echo "$out" | awk '/Latency/ {print $2}')
  awk -v n="$name" -v r="$rps" -v c="$((c1 - c0))" -v q="$reqs" -v l="$p99" \
    'BEGIN { printf "%-9s %10.0f req/s   %5.2f us CPU/request   mean latency %s\n", n, r, c * 10000 / q, l }'
}

echo "wrk -t1 -c50 -d${SECS}s on CPU 0; proxy and nginx backend on CPU 1"
run backend "$BE" "$BE_PID"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then
    run nginx "$NG" "$NGINX_PID"; run ringmesh "$RM" "$RM_PID"
  else
    run ringmesh "$RM" "$RM_PID"; run nginx "$NG" "$NGINX_PID"
  fi
  if [ -n "$RL_PID" ]; then run relay "$RL" "$RL_PID"; fi
done
