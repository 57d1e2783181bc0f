#!/usr/bin/env bash
# The kernel shortcut (`ringmesh init --accelerate`) measured, in the same run:
#
# 1. One local hop alone (ringmesh-pingpong, 100-byte round trips between two threads of one
#    process, as the proxy's user, on CPU 1): through TCP, shortcut, and over a Unix socket pair
#    for reference. CPU per round trip, user and kernel. Then flow control: how much a sender
#    gets accepted when the other end never reads (the shortcut has none: see docs/sidecar.md).
# 2. A request from an application through its outbound sidecar to an upstream and back: wrk (the
#    application, in pod A's cgroup, on CPU 0) calls a service address that nftables redirects to
#    the sidecar (one worker, io_uring, as user 1337, CPU 1), which calls nginx in pod B (CPU 1)
#    across a veth pair. Modes, alternated each round:
#      direct    wrk straight to nginx (as the proxy's user, which nftables leaves alone)
#      relay     wrk to ringmesh-relay on 127.0.0.1 in pod A (outside the cgroup, as the
#                proxy's user), the bare relay's plain hop: the floor of a proxy hop
#      tcp       the sidecar path, local hop through TCP
#      shortcut  the sidecar path with the kernel shortcut
#    At 50 connections and at 1: requests/s, machine CPU per request (all processes on the path
#    and the kernel's softirqs: busy time of /proc/stat over the run, divided by requests), and
#    wrk's p50/p99; "added" is p50 minus direct's.
#
#   bash perf/sidecar-accelerate.sh [ROUNDS] [SECONDS]      (as root, cgroup v2, BPF)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-8}"

source perf/lib.sh
perf_setup
cargo build --release -q -p ringmesh-perf --bin ringmesh-relay --bin ringmesh-pingpong
command -v nsenter >/dev/null || apt-get install -y -q util-linux >/dev/null
A=rmacc-a; B=rmacc-b
pods_setup "$A" "$B" 10.79.0
CG_ROOT=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
[ -n "$CG_ROOT" ] || { echo "no cgroup v2 hierarchy mounted" >&2; exit 1; }
CG="$CG_ROOT/ringmesh-perf-a"
mkdir -p "$CG"
RM=target/release/ringmesh
cleanup_all() {
  nsenter --net="/run/netns/$A" "$RM" init --remove --cgroup "$CG" >/dev/null 2>&1 || true
  pods_cleanup
  rmdir "$CG" 2>/dev/null || true
}
trap cleanup_all EXIT
AS_PROXY=(setpriv --reuid 1337 --regid 1337 --clear-groups)
# Runs a command in pod A's network namespace and cgroup.
in_a() { sh -c 'echo $$ > "$0" && exec "$@"' "$CG/cgroup.procs" ip netns exec "$A" "$@"; }

backend_conf "$dir" 10.79.0.2:8080 > "$dir/backend.conf"
outbound_sidecar_yaml 10.79.0.100:80 10.79.0.2:8080 > "$dir/sidecar.yaml" </dev/null
chmod 644 "$dir"/*
ip netns exec "$B" taskset -c 1 nginx -c "$dir/backend.conf" & pids+=($!)
in_a taskset -c 1 setpriv --reuid 1337 --regid 1337 --clear-groups \
  "$RM" proxy --config "$dir/sidecar.yaml" --workers 1 --log-level warn & pids+=($!)
# As the proxy's user, so that nftables leaves its upstream connections alone.
ip netns exec "$A" taskset -c 1 "${AS_PROXY[@]}" target/release/ringmesh-relay \
  --listen 127.0.0.1:15080 --upstream 10.79.0.2:8080 --cpu 1 & pids+=($!)
sleep 1

tcp_mode() {
  nsenter --net="/run/netns/$A" "$RM" init --remove --cgroup "$CG" 2>/dev/null
  nsenter --net="/run/netns/$A" "$RM" init --proxy-uid 1337
}
shortcut_mode() {
  nsenter --net="/run/netns/$A" "$RM" init --proxy-uid 1337 --accelerate --cgroup "$CG" 2>/dev/null
}

echo "== one local hop alone: 200000 round trips of 100 B, both ends on CPU 1"
tcp_mode
for r in $(seq 1 "$ROUNDS"); do
  tcp_mode
  printf 'tcp       '; in_a taskset -c 1 "${AS_PROXY[@]}" target/release/ringmesh-pingpong
  shortcut_mode
  printf 'shortcut  '; in_a taskset -c 1 "${AS_PROXY[@]}" target/release/ringmesh-pingpong
  printf 'unix      '; in_a taskset -c 1 "${AS_PROXY[@]}" target/release/ringmesh-pingpong --unix
done

echo "== flow control: the sender writes, the other end never reads"
tcp_mode
printf 'tcp       '; in_a taskset -c 1 "${AS_PROXY[@]}" target/release/ringmesh-pingpong --no-reader
shortcut_mode
printf 'shortcut  '; in_a taskset -c 1 "${AS_PROXY[@]}" target/release/ringmesh-pingpong --no-reader

busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }  # user nice system irq softirq

run() {
  local mode=$1 conns=$2 url user=()
  case $mode in
    direct) url=http://10.79.0.2:8080/; user=(setpriv --reuid 1337 --regid 1337 --clear-groups) ;;
    relay) url=http://127.0.0.1:15080/ ;;
    tcp) tcp_mode; url=http://10.79.0.100/ ;;
    shortcut) shortcut_mode; url=http://10.79.0.100/ ;;
  esac
  local b0 b1 out
  b0=$(busy)
  out=$(in_a taskset -c 0 "${user[@]}" wrk -t1 -c"$conns" -d"${SECS}s" --latency "$url")
  b1=$(busy)
  local rps reqs p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  [ "$mode" = direct ] && DIRECT_P50=$p50
  awk -v m="$mode" -v c="$conns" -v r="$rps" -v t="$((b1 - b0))" -v q="$reqs" -v a="$p50" \
      -v b="$p99" -v d="$DIRECT_P50" '
    function us(x) { if (x ~ /us$/) return x + 0; if (x ~ /ms$/) return x * 1000; return x * 1e6 }
    BEGIN { printf "%-9s c=%-3s %8.0f req/s   %6.2f us CPU/request   p50 %-8s p99 %-8s added p50 %6.1f us\n",
            m, c, r, t * 10000 / q, a, b, us(a) - us(d) }'
}

echo "== application -> sidecar -> upstream: wrk -t1 -d${SECS}s on CPU 0; sidecar, relay and nginx on CPU 1"
tcp_mode
in_a taskset -c 0 wrk -t1 -c50 -d2s http://10.79.0.100/ >/dev/null
for conns in 50 1; do
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then order="direct relay tcp shortcut"; else order="direct shortcut tcp relay"; fi
    for m in $order; do run "$m" "$conns"; done
  done
done
in_a curl -s http://127.0.0.1:9901/metrics | grep -E '^ringmesh_(accelerated|io_uring) '
