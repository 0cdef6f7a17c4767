# hack/bench-common.sh: the start-up hack/bench-proxy.sh and
# hack/bench-latency.sh share; sourced by them (from the repository's root,
# with BENCH, the name their messages start with, set), not run. It makes
# the scratch directory $work, and on exit kills the processes started
# ($pids) and removes it. Every server listens on loopback:
#
#   bench_build                      builds bin/manager, bin/bench-proxy and bin/localcluster
#   bench_nginx LISTEN UPSTREAM      nginx (2 workers, keep-alive upstream) in front of UPSTREAM
#                                    (host:port), its pid in $nginx_pid; without nginx: a message, status 1
#   bench_breaker_sample UPSTREAM    the CircuitBreaker default/bench on http://UPSTREAM, in $work/samples
#   bench_manager PROXY API HEALTH   the real bin/manager on a local control plane holding $work/samples,
#                                    its proxy on PROXY (host:port); returns once /default/bench/ answers
#                                    through it (exits 1 if it does not), the manager's pid in $manager_pid

set -euo pipefail
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/samples"

bench_build() {
  go build -o bin/manager ./cmd/manager
  go build -o bin/bench-proxy ./hack/bench-proxy
  go build -o bin/localcluster ./hack/localcluster
}

bench_nginx() {
  local listen="$1" upstream="$2"
  if ! command -v nginx >/dev/null; then
    echo "$BENCH: nginx is not installed (apt-get install nginx-light): its row is skipped" >&2
    return 1
  fi
  cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server $upstream; keepalive 64; }
  server {
    listen $listen;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
  nginx -p "$work" -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!); nginx_pid=$!
}

bench_breaker_sample() {
  cat >"$work/samples/bench.yaml" <<YAML
apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: bench, namespace: default}
spec:
  upstream: {url: "http://$1"}
YAML
}

bench_manager() {
  local proxy="$1" api="$2" health="$3"
  bin/localcluster -test-hosts=false -samples "$work/samples" -write-kubeconfig "$work/kubeconfig" -- bin/manager --allow-url-upstreams \
    --proxy-bind-address "$proxy" --api-bind-address "$api" \
    --health-probe-bind-address "$health" --metrics-bind-address 0 >"$work/manager.log" 2>&1 & pids+=($!)
  for _ in $(seq 600); do
    curl -sf -o /dev/null "http://$proxy/default/bench/" && break
    sleep 0.5
  done
  curl -sf -o /dev/null "http://$proxy/default/bench/" || { echo "$BENCH: the manager did not come up"; tail -20 "$work/manager.log"; exit 1; }
  # The manager itself, not localcluster (whose command line holds the
  # manager's, and whose children are the API server and etcd).
  manager_pid=$(pgrep -f -- "^bin/manager .*--proxy-bind-address $proxy" | head -1)
}
