# Shared by the perf shell scripts: tools, the release build, free ports, CPU time.

# Installs nginx, wrk and taskset from Debian packages when missing, then builds the proxy.
perf_setup() {
  for cmd in nginx wrk taskset; do
    command -v "$cmd" >/dev/null || {
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q nginx wrk util-linux >/dev/null ||
        { apt-get update -q && apt-get install -y -q nginx wrk util-linux >/dev/null; }
    }
  done
  cargo build --release -q -p ringmesh-control --bin ringmesh
}

# A wrk script (`wrk -s`) that prints requests/s and the percentiles p10 to p99.9 (µs) on stderr.
wrk_percentiles_lua() {
  cat <<'EOF'
done = function(summary, latency, requests)
  local s = string.format("%7.0f req/s ", summary.requests / (summary.duration / 1e6))
  for _, p in ipairs({10, 50, 75, 90, 95, 99, 99.9}) do
    s = s .. string.format(" p%s %5d", p, latency:percentile(p))
  end
  io.stderr:write(s .. "\n")
end
EOF
}

# Starts an nginx reverse proxy on 127.0.0.1:$2 and ringmesh on 127.0.0.1:$3, both in front of
# 127.0.0.1:$4, on CPU 1 with one worker each; their configs go under $1, their pids onto `pids`.
start_nginx_and_ringmesh() {
  nginx_proxy_conf "$1" "$2" "$4" > "$1/proxy.conf"
  ringmesh_proxy_yaml "$3" "$4" > "$1/ringmesh.yaml"
  chmod 644 "$1/proxy.conf" "$1/ringmesh.yaml"
  taskset -c 1 nginx -c "$1/proxy.conf" & pids+=($!)
  taskset -c 1 target/release/ringmesh proxy --config "$1/ringmesh.yaml" --workers 1 \
    --log-level warn & pids+=($!)
}

# A port that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The nginx backend's config: one worker, a 2-byte answer on $2 (a port on 127.0.0.1, or
# ADDRESS:PORT), files under $1.
backend_conf() {
  local listen=$2
  case $listen in *:*) ;; *) listen=127.0.0.1:$listen ;; esac
  cat <<EOC
worker_processes 1; daemon off; pid $1/backend.pid; error_log $1/backend.err warn;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000;
  server { listen $listen reuseport backlog=4096; location / { return 200 "ok"; } } }
EOC
}

# An nginx reverse proxy's config (one worker, upstream keep-alive pool): files under $1,
# listening on 127.0.0.1:$2, in front of the backend on 127.0.0.1:$3.
nginx_proxy_conf() {
  cat <<EOC
worker_processes 1; daemon off; pid $1/proxy.pid; error_log $1/proxy.err warn;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000;
  upstream be { server 127.0.0.1:$3; keepalive 256; }
  server { listen 127.0.0.1:$2 reuseport backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
}

# ringmesh's config for the same: a listener on 127.0.0.1:$1, every path to 127.0.0.1:$2.
ringmesh_proxy_yaml() {
  cat <<EOC
admin: 127.0.0.1:0
listeners:
  - { name: edge, bind: 127.0.0.1:$1, routes: [ { match: { path_prefix: / }, cluster: be } ] }
clusters:
  - { name: be, endpoints: [ { addr: 127.0.0.1:$2 } ] }
EOC
}

# A 1 MiB page of HTML table rows (compressible as pages are) at $1.
page_html() {
  python3 - "$1" <<'PY'
import sys
rows, i, size = [], 0, 0
while size < 1 << 20:
    line = f'<tr><td>row {i}</td><td class="v">{(i * 2654435761) % 10007}</td></tr>\n'
    rows.append(line); size += len(line); i += 1
open(sys.argv[1], "w").write("".join(rows)[: 1 << 20])
PY
}

# A backend nginx serving $1/page.html uncompressed at every path but /small (a 2-byte answer),
# on 127.0.0.1:$2.
page_backend_conf() {
  cat <<EOC
worker_processes 1; daemon off; pid $1/backend.pid; error_log $1/backend.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; default_type text/html; gzip off;
  server { listen 127.0.0.1:$2 reuseport; root $1;
    location = /small { return 200 "ok"; }
    location / { try_files /page.html =404; } } }
EOC
}

# A sidecar's outbound listener on 127.0.0.1:15001 (admin 127.0.0.1:9901) and the cluster
# `back`: the service address $1 balanced over the endpoint $2; extra listener lines from stdin.
outbound_sidecar_yaml() {
  cat <<EOC
admin: 127.0.0.1:9901
listeners:
  - name: outbound
    bind: 127.0.0.1:15001
    outbound: {}
    routes: []
$(cat)
clusters:
  - { name: back, addresses: [ "$1" ], endpoints: [ { addr: "$2" } ] }
EOC
}

# Kills the given processes and all their descendants (nginx workers outlive their master
# otherwise, and a backgrounded shell function puts one more process between them). Parents go
# first: an nginx master that sees its worker die starts another one. A worker left behind keeps
# the script's stdout open, and a pipe reading it never ends.
kill_all() {
  local p kids
  for p in "$@"; do
    kids=$(pgrep -P "$p" 2>/dev/null || true)
    kill -9 "$p" 2>/dev/null || true
    [ -z "$kids" ] || kill_all $kids
  done
}

# Two pods for the sidecar scripts: namespaces $1 and $2 joined by a veth pair on $3.0/24 ($1 is
# $3.1, $2 is $3.2), and a directory every user can read, in $dir. `pids` collects what to kill;
# everything is removed on exit. Needs root, iproute2 and nftables (installed when missing).
pods_setup() {
  command -v nft >/dev/null || apt-get install -y -q nftables >/dev/null
  POD_A=$1; POD_B=$2
  dir=$(mktemp -d); chmod 755 "$dir"
  pids=()
  trap pods_cleanup EXIT
  for ns in "$POD_A" "$POD_B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
  ip -n "$POD_A" link add veth0 type veth peer name veth0 netns "$POD_B"
  ip -n "$POD_A" addr add "$3.1/24" dev veth0; ip -n "$POD_A" link set veth0 up
  ip -n "$POD_B" addr add "$3.2/24" dev veth0; ip -n "$POD_B" link set veth0 up
}

pods_cleanup() {
  kill_all "${pids[@]}"
  ip netns del "$POD_A" 2>/dev/null || true
  ip netns del "$POD_B" 2>/dev/null || true
  rm -rf "$dir"
}
