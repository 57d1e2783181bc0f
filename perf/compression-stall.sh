#!/usr/bin/env bash
# Whether compressing large answers stalls the other connections of the worker doing it. One
# ringmesh worker on CPU 1; an nginx backend and the clients on CPU 0. wrk keeps 10 connections
# busy with small requests (`/small`, a 2-byte answer) and reports their latency, first alone,
# then while 4 more connections fetch a 1 MiB page without compression, then coded with gzip,
# br and zstd at the route's default levels. The page's encoder takes 16 KiB per step and
# writing each step's output yields: a small request waits for a few steps at most, never for a
# whole page's coding.
#
#   bash perf/compression-stall.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"

source perf/lib.sh
perf_setup

dir=$(mktemp -d); chmod 755 "$dir"  # nginx workers read the page as another user
BE=$(free_port); RM=$(free_port)
page_html "$dir/page.html"
page_backend_conf "$dir" "$BE" > "$dir/backend.conf"
cat > "$dir/ringmesh.yaml" <<EOC
admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:$RM
    routes:
      - { match: { path_prefix: /coded/ }, cluster: be, compression: {}, rewrite: { prefix: / } }
      - { match: { path_prefix: / }, cluster: be }
clusters:
  - { name: be, endpoints: [ { addr: 127.0.0.1:$BE } ] }
EOC
pids=()
trap 'kill_all "${pids[@]}"; rm -rf "$dir"' EXIT
taskset -c 0 nginx -c "$dir/backend.conf" & pids+=($!)
taskset -c 1 target/release/ringmesh proxy --config "$dir/ringmesh.yaml" --workers 1 --log-level warn & pids+=($!)
sleep 1
small() {
  taskset -c 0 wrk -t1 -c10 -d"${SECS}s" --latency "http://127.0.0.1:$RM/small" |
    awk '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} END {printf "small: %8.0f req/s  p50 %8s  p99 %8s", rps, p50, p99}'
}
with_pages() { # label, accept-encoding
  local out
  out=$(mktemp)
  taskset -c 0 wrk -t1 -c4 -d"$((SECS + 2))s" -H "accept-encoding: $2" "http://127.0.0.1:$RM/coded/page" > "$out" &
  local w=$!
  sleep 1
  printf "%-24s %s" "$1" "$(small)"
  wait "$w"
  awk '/Requests\/sec/ {printf "   pages: %.1f MiB/s\n", $2}' "$out"
  rm -f "$out"
}
echo "1 ringmesh worker on CPU 1; backend and wrk on CPU 0; ${SECS}s per line"
printf "%-24s %s\n" "alone" "$(small)"
with_pages "with pages, identity" identity
with_pages "with pages, gzip" gzip
with_pages "with pages, br" br
with_pages "with pages, zstd" zstd
