#!/usr/bin/env bash
# 5,000 clients at once through ringmesh and through nginx, against one nginx backend that
# takes at most 4,096 connections (worker_connections 4096): failed requests, p99, and the
# proxy's peak RSS under the burst and what it keeps a minute after. Rounds alternate the two
# proxies; both run one worker on CPU 1 with the backend, wrk (2 threads) on CPU 0.
#
#   bash perf/burst.sh [ROUNDS] [SECONDS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-2}"
SECS="${2:-8}"
CLIENTS="${3:-5000}"

source perf/lib.sh
perf_setup
ulimit -n "$(ulimit -Hn)"

dir=$(mktemp -d)
BE=$(free_port); NG=$(free_port); RM=$(free_port)
cat > "$dir/backend.conf" <<EOC
worker_processes 1; daemon off; pid $dir/backend.pid; error_log $dir/backend.err crit;
worker_rlimit_nofile 65536;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:$BE reuseport backlog=4096; location / { return 200 "ok"; } } }
EOC
cat > "$dir/proxy.conf" <<EOC
worker_processes 1; daemon off; pid $dir/proxy.pid; error_log $dir/proxy.err crit;
worker_rlimit_nofile 65536;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream be { server 127.0.0.1:$BE; keepalive 1024; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NG reuseport backlog=8192;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
cat > "$dir/ringmesh.yaml" <<EOC
admin: 127.0.0.1:0
listeners:
  - { name: edge, bind: 127.0.0.1:$RM, idle_timeout: 300s, routes: [ { match: { path_prefix: / }, cluster: be } ] }
clusters:
  - { name: be, endpoints: [ { addr: 127.0.0.1:$BE } ] }
EOC

pids=()
cleanup() { kill_all "${pids[@]}"; rm -rf "$dir"; }
trap cleanup EXIT
taskset -c 1 nginx -c "$dir/backend.conf" & pids+=($!)
taskset -c 1 nginx -c "$dir/proxy.conf" & pids+=($!)
taskset -c 1 target/release/ringmesh proxy --config "$dir/ringmesh.yaml" --workers 1 --log-level warn & pids+=($!)
sleep 1
NGINX_PID=${pids[1]}
RM_PID=${pids[2]}

# Resident memory (KiB) of a process and its children.
rss() {
  local total=0 kb
  for p in "$1" $(pgrep -P "$1" || true); do
    kb=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + kb))
  done
  echo "$total"
}

run() {
  local name=$1 port=$2 pid=$3 peak=0 out
  local before; before=$(rss "$pid")
  ( while sleep 0.5; do r=$(rss "$pid"); [ "$r" -gt "$(cat "$dir/peak")" ] && echo "$r" > "$dir/peak"; done ) &
  local watcher=$!
  echo 0 > "$dir/peak"
  out=$(taskset -c 0 wrk -t2 -c"$CLIENTS" -d"${SECS}s" --latency --timeout 10s "http://127.0.0.1:$port/" 2>&1)
  kill "$watcher" 2>/dev/null || true
  peak=$(cat "$dir/peak")
  local reqs non2xx errs p99
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}'); non2xx=${non2xx:-0}
  errs=$(echo "$out" | awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}'); errs=${errs:-0}
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  printf "%-9s %9s requests  %6s non-2xx  %6s socket errors  p99 %8s  RSS %6d KiB before, %6d KiB peak" \
    "$name" "$reqs" "$non2xx" "$errs" "$p99" "$before" "$peak"
  sleep 60
  printf ", %6d KiB a minute later\n" "$(rss "$pid")"
}

echo "wrk -t2 -c$CLIENTS -d${SECS}s on CPU 0; the proxy and an nginx backend taking 4,096 connections on CPU 1"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then
    run nginx "$NG" "$NGINX_PID"; run ringmesh "$RM" "$RM_PID"
  else
    run ringmesh "$RM" "$RM_PID"; run nginx "$NG" "$NGINX_PID"
  fi
done
