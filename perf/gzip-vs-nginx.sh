#!/usr/bin/env bash
# CPU per MiB of answers compressed with gzip: ringmesh (route `compression`) against nginx
# (`gzip on`) at the same level, in one run. A backend nginx serves a 1 MiB compressible page
# (text/html) uncompressed; each proxy, one worker on CPU 1, passes it on gzipped; wrk on CPU 0
# (with the backend) fetches it over 4 keep-alive connections with `Accept-Encoding: gzip`.
# Rounds alternate the order. Prints MiB/s, CPU milliseconds per MiB of page (the proxy
# process, user + system) and the coded size, then the medians and their ratio.
#
#   bash perf/gzip-vs-nginx.sh [ROUNDS] [SECONDS]
#
# LEVEL=n sets both proxies' level (default 2, ringmesh's default). RM_LEVEL=n sets ringmesh's
# alone: zlib-rs (ringmesh's gzip) codes level 1 with its quick strategy, which nginx's zlib
# does not have; level 2 is the algorithm zlib's level 1 uses (deflate_fast), for a comparison
# of like with like.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-4}"
SECS="${2:-10}"
LEVEL="${LEVEL:-2}"
RM_LEVEL="${RM_LEVEL:-$LEVEL}"

source perf/lib.sh
perf_setup

dir=$(mktemp -d); chmod 755 "$dir"  # nginx workers read the page as another user
BE=$(free_port); NG=$(free_port); RM=$(free_port)
page_html "$dir/page.html"
page_backend_conf "$dir" "$BE" > "$dir/backend.conf"
cat > "$dir/nginx.conf" <<EOC
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  gzip on; gzip_comp_level $LEVEL; gzip_min_length 1024; gzip_proxied any;
  upstream be { server 127.0.0.1:$BE; keepalive 16; }
  server { listen 127.0.0.1:$NG reuseport;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
cat > "$dir/ringmesh.yaml" <<EOC
admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:$RM
    routes:
      - match: { path_prefix: / }
        cluster: be
        compression: { algorithms: [gzip], levels: { gzip: $RM_LEVEL }, types: [text/html] }
clusters:
  - { name: be, endpoints: [ { addr: 127.0.0.1:$BE } ] }
EOC

pids=()
trap 'kill_all "${pids[@]}"; rm -rf "$dir"' EXIT
taskset -c 0 nginx -c "$dir/backend.conf" & pids+=($!)
taskset -c 1 nginx -c "$dir/nginx.conf" & pids+=($!)
taskset -c 1 target/release/ringmesh proxy --config "$dir/ringmesh.yaml" --workers 1 --log-level warn & pids+=($!)
RM_PID=$!
for port in "$NG" "$RM"; do
  for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
done
NG_WORKER=$(pgrep -P "$(cat "$dir/nginx.pid")")

size() { curl -s -H 'accept-encoding: gzip' "http://127.0.0.1:$1/" | wc -c; }
check() { curl -s -H 'accept-encoding: gzip' "http://127.0.0.1:$1/" | gunzip | cmp - "$dir/page.html"; }
check "$NG"; check "$RM"
echo "1 MiB page, coded size: nginx $(size "$NG") bytes (level $LEVEL), ringmesh $(size "$RM") bytes (level $RM_LEVEL)"

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A MS MIBS
run() {
  local name=$1 port=$2 pid=$3 c0 c1 out reqs ms
  c0=$(cpu "$pid")
  out=$(taskset -c 0 wrk -t1 -c4 -d"${SECS}s" -H 'accept-encoding: gzip' "http://127.0.0.1:$port/")
  c1=$(cpu "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  ms=$(awk -v c="$((c1 - c0))" -v q="$reqs" 'BEGIN { printf "%.3f", c * 10 / q }')
  printf "%-9s %8.1f MiB/s   %s ms CPU per MiB\n" "$name" "$(awk -v q="$reqs" -v s="$SECS" 'BEGIN { print q / s }')" "$ms"
  MS[$name]="${MS[$name]:-} $ms"
}
echo "wrk -t1 -c4 -d${SECS}s on CPU 0 with the backend; each proxy one worker on CPU 1"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then run nginx "$NG" "$NG_WORKER"; run ringmesh "$RM" "$RM_PID"
  else run ringmesh "$RM" "$RM_PID"; run nginx "$NG" "$NG_WORKER"; fi
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
n=$(echo "${MS[nginx]}" | median); m=$(echo "${MS[ringmesh]}" | median)
awk -v n="$n" -v m="$m" 'BEGIN { printf "medians: nginx %.3f ms/MiB, ringmesh %.3f ms/MiB; ringmesh/nginx %.3f\n", n, m, m / n }'
