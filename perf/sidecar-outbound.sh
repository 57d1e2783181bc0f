#!/usr/bin/env bash
# A sidecar's transparent outbound path against its explicit-listener path, in the same run, on
# the same sidecar: wrk (the application, in pod namespace A, as root) calls either a service's
# virtual address (redirected by `ringmesh init` to the outbound listener, which reads the
# original destination and detects HTTP) or a plain listener on 127.0.0.1 routed to the same
# cluster. The backend is nginx in namespace B, across a veth pair. wrk on CPU 0; the sidecar
# and the backend on CPU 1; one worker; 50 keep-alive connections. Prints requests/s, the
# sidecar's CPU per request (user + system, from /proc) and wrk's latency.
#
#   bash perf/sidecar-outbound.sh [ROUNDS] [SECONDS]      (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-10}"

source perf/lib.sh
perf_setup
A=rmperf-a; B=rmperf-b
pods_setup "$A" "$B" 10.78.0

backend_conf "$dir" 10.78.0.2:8080 > "$dir/backend.conf"
outbound_sidecar_yaml 10.78.0.100:80 10.78.0.2:8080 > "$dir/sidecar.yaml" <<'EOC'
  - name: explicit
    bind: 127.0.0.1:15080
    routes: [ { match: { path_prefix: / }, cluster: back } ]
EOC
chmod 644 "$dir"/*
ip netns exec "$B" taskset -c 1 nginx -c "$dir/backend.conf" & pids+=($!)
ip netns exec "$A" taskset -c 1 setpriv --reuid 1337 --regid 1337 --clear-groups \
  target/release/ringmesh proxy --config "$dir/sidecar.yaml" --workers 1 --log-level warn & pids+=($!)
SC_PID=${pids[1]}
sleep 1
ip netns exec "$A" target/release/ringmesh init --proxy-uid 1337

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() {
  local name=$1 url=$2
  local c0 c1 out
  c0=$(cpu "$SC_PID")
  out=$(ip netns exec "$A" taskset -c 0 wrk -t1 -c50 -d"${SECS}s" --latency "$url")
  c1=$(cpu "$SC_PID")
  local rps reqs p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  awk -v n="$name" -v r="$rps" -v c="$((c1 - c0))" -v q="$reqs" -v a="$p50" -v b="$p99" \
    'BEGIN { printf "%-12s %8.0f req/s   %5.2f us sidecar CPU/request   p50 %s   p99 %s\n", n, r, c * 10000 / q, a, b }'
}

echo "wrk -t1 -c50 -d${SECS}s --latency on CPU 0 (namespace $A); sidecar and nginx backend on CPU 1"
ip netns exec "$A" taskset -c 0 wrk -t1 -c50 -d2s http://10.78.0.100/ >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then
    run explicit http://127.0.0.1:15080/; run transparent http://10.78.0.100/
  else
    run transparent http://10.78.0.100/; run explicit http://127.0.0.1:15080/
  fi
done
ip netns exec "$A" curl -s http://127.0.0.1:9901/metrics | grep '^ringmesh_outbound_connections_total' | grep -v ' 0$'
