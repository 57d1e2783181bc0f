#!/usr/bin/env bash
# Latency a request pays through two sidecars (A's outbound, then B's inbound: mTLS and HTTP/2
# between them) against what one plain HTTP/1.1 hop adds, in the same run. Pod A (namespace
# rmmesh-a) runs wrk and its sidecar; pod B (rmmesh-b) runs nginx (the application, ports 8080
# and 8090) and its sidecar; a veth pair joins them. Three paths, each at 1 and at 50
# connections:
#   direct      wrk -> B:8090 (a port both pods' rules skip)
#   one hop     wrk -> A's plain listener 127.0.0.1:15080 -> B:8090 (HTTP/1.1, pooled)
#   sidecars    wrk -> B:8080, redirected: A's outbound -> mTLS, HTTP/2 -> B's inbound -> nginx
# wrk on CPU 0; sidecars and nginx on CPU 1; one worker each. Prints wrk's p50/p99 and
# requests/s, and the latency each path adds over direct at p50. With ACCELERATE=1 each pod
# runs in a cgroup of its own with `ringmesh init --accelerate`: the sidecars' local hops
# (wrk to A's sidecar, B's sidecar to nginx) skip TCP/IP; the one-hop path does not change.
# With FLOOR=1 every proxy is replaced by `ringmesh-relay` (a bare TCP relay that parses nothing:
# no TLS, no HTTP/2), under the same rules and layout: the ratio it prints is the least any
# proxy can reach in this topology, since the sidecar path crosses two proxies and two more TCP
# connections where the one-hop path crosses one of each.
#
#   [ACCELERATE=1] [FLOOR=1] bash perf/sidecar-mesh.sh [ROUNDS] [SECONDS]      (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-10}"

source perf/lib.sh
perf_setup
A=rmmesh-a; B=rmmesh-b
pods_setup "$A" "$B" 10.79.0
ACCELERATE="${ACCELERATE:-0}"
CG_ROOT=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
# Runs a command in a pod's network namespace (and, accelerated, its cgroup).
in_pod() {
  local ns=$1; shift
  if [ "$ACCELERATE" = 1 ]; then
    mkdir -p "$CG_ROOT/$ns"
    sh -c 'echo $$ > "$0" && exec "$@"' "$CG_ROOT/$ns/cgroup.procs" ip netns exec "$ns" "$@"
  else
    ip netns exec "$ns" "$@"
  fi
}
# `ringmesh init ARGS` for a pod, with the kernel shortcut when accelerated.
init_pod() {
  local ns=$1; shift
  if [ "$ACCELERATE" = 1 ]; then
    nsenter --net="/run/netns/$ns" target/release/ringmesh init "$@" --accelerate --cgroup "$CG_ROOT/$ns"
  else
    ip netns exec "$ns" target/release/ringmesh init "$@"
  fi
}
if [ "$ACCELERATE" = 1 ]; then
  trap 'for ns in "$A" "$B"; do nsenter --net="/run/netns/$ns" target/release/ringmesh init --remove --cgroup "$CG_ROOT/$ns" 2>/dev/null; done; pods_cleanup; rmdir "$CG_ROOT/$A" "$CG_ROOT/$B" 2>/dev/null || true' EXIT
fi

# The mesh's CA, B's server certificate (b.mesh) and A's client certificate (a SPIFFE ID).
(
  cd "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=perf-ca -keyout ca.key -out ca.pem 2>/dev/null
  for who in b a; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" \
      -keyout "$who.key" -out "$who.csr" 2>/dev/null
  done
  printf 'subjectAltName=DNS:b.mesh\n' > b.ext
  printf 'subjectAltName=URI:spiffe://perf.mesh/ns/default/sa/a\n' > a.ext
  for who in b a; do
    openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "$who.ext" -out "$who.pem" 2>/dev/null
  done
  chmod 644 ./*
)

cat > "$dir/nginx.conf" <<EOC
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err warn;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000;
  server { listen 0.0.0.0:8080 reuseport backlog=4096; listen 0.0.0.0:8090 reuseport backlog=4096;
           location / { return 200 "ok"; } } }
EOC
cat > "$dir/b.yaml" <<EOC
admin: 127.0.0.1:9901
listeners:
  - name: inbound
    bind: 0.0.0.0:15006
    tls: { certs: [ { cert: $dir/b.pem, key: $dir/b.key } ], client_ca: $dir/ca.pem }
    inbound: { ports: [ { port: 8080, cluster: app } ] }
    routes: []
clusters:
  - { name: app, endpoints: [ { addr: "127.0.0.1:8080" } ] }
EOC
cat > "$dir/a.yaml" <<EOC
admin: 127.0.0.1:9901
listeners:
  - name: outbound
    bind: 127.0.0.1:15001
    outbound: {}
    routes: []
  - name: plain
    bind: 127.0.0.1:15080
    routes: [ { match: { path_prefix: / }, cluster: b-plain } ]
clusters:
  - name: b
    protocol: mesh
    tls: { sni: b.mesh, ca: $dir/ca.pem, cert: $dir/a.pem, key: $dir/a.key }
    endpoints: [ { addr: "10.79.0.2:8080" } ]
  - { name: b-plain, endpoints: [ { addr: "10.79.0.2:8090" } ] }
EOC
chmod 644 "$dir"/*.yaml "$dir"/*.conf
in_pod "$B" taskset -c 1 nginx -c "$dir/nginx.conf" & pids+=($!)
# Runs a command in a pod as the proxies' user (whose traffic the rules do not redirect).
as_proxy() {
  local ns=$1; shift
  in_pod "$ns" taskset -c 1 setpriv --reuid 1337 --regid 1337 --clear-groups "$@"
}
if [ "${FLOOR:-0}" = 1 ]; then
  cargo build --release -q -p ringmesh-perf --bin ringmesh-relay
  relay=target/release/ringmesh-relay
  as_proxy "$B" "$relay" --listen 0.0.0.0:15006 --upstream 127.0.0.1:8080 >/dev/null & pids+=($!)
  as_proxy "$A" "$relay" --listen 127.0.0.1:15001 --upstream 10.79.0.2:8080 >/dev/null & pids+=($!)
  as_proxy "$A" "$relay" --listen 127.0.0.1:15080 --upstream 10.79.0.2:8090 >/dev/null & pids+=($!)
  echo "FLOOR=1: bare TCP relays in place of both sidecars and of the plain hop"
else
  for ns in "$B" "$A"; do
    conf="$dir/b.yaml"; [ "$ns" = "$A" ] && conf="$dir/a.yaml"
    as_proxy "$ns" target/release/ringmesh proxy --config "$conf" --workers 1 --log-level warn &
    pids+=($!)
  done
fi
sleep 1
init_pod "$B" --proxy-uid 1337 --inbound-port 15006 --skip-inbound-ports 8090
init_pod "$A" --proxy-uid 1337 --skip-outbound-ports 8090

declare -A P50
run() {
  local name=$1 conns=$2 url=$3 out
  out=$(in_pod "$A" taskset -c 0 wrk -t1 -c"$conns" -d"${SECS}s" --latency "$url")
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  printf '%-9s c=%-3s %9.0f req/s   p50 %-9s p99 %s\n' "$name" "$conns" "$rps" "$p50" "$p99"
  P50["$name/$conns/$r"]=$p50
}
# wrk's "123.45us" / "1.23ms" in microseconds.
us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /ms$/) n *= 1000; else if (v ~ /[0-9]s$/) n *= 1000000; print n }'; }

echo "wrk -t1 -d${SECS}s --latency on CPU 0 (namespace $A); sidecars and nginx on CPU 1"
for url in http://10.79.0.2:8090/ http://127.0.0.1:15080/ http://10.79.0.2:8080/; do
  ip netns exec "$A" taskset -c 0 wrk -t1 -c10 -d1s "$url" >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  for c in 1 50; do
    run direct "$c" http://10.79.0.2:8090/
    run one-hop "$c" http://127.0.0.1:15080/
    run sidecars "$c" http://10.79.0.2:8080/
    d=$(us "${P50[direct/$c/$r]}"); h=$(us "${P50[one-hop/$c/$r]}"); s=$(us "${P50[sidecars/$c/$r]}")
    awk -v c="$c" -v d="$d" -v h="$h" -v s="$s" 'BEGIN {
      printf "  added at p50, c=%s: one plain hop %.0f us; two sidecars %.0f us (%.2fx)\n",
        c, h - d, s - d, ((h - d) > 0 ? (s - d) / (h - d) : 0) }'
  done
done
[ "${FLOOR:-0}" = 1 ] && exit 0
ip netns exec "$B" curl -s http://127.0.0.1:9901/metrics |
  grep -E '^ringmesh_inbound_connections_total|^ringmesh_accelerated' | grep -v 'total.* 0$'
