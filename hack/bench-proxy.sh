#!/usr/bin/env bash
# make bench-proxy: the proxy hop as a caller pays for it. Every server is
# its own process on loopback: a 64-byte upstream; two identical bare
# httputil.ReverseProxy fronts with a pooled buffer (bare-A, bare-B: their
# difference is the noise); nginx, when installed; and the real bin/manager
# on a local control plane with one breaker. wrk loads each in turn, in
# interleaved rounds, and each server's CPU per request is read from /proc.
#
#   ROUNDS=3 DURATION=10s CONNECTIONS=64 THREADS=2 hack/bench-proxy.sh
#
# Needs wrk (and nginx for its row): apt-get install wrk nginx-light.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"

if ! command -v wrk >/dev/null; then
  echo "bench-proxy: wrk is not installed (apt-get install wrk nginx-light): skipped"
  exit 0
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

go build -o bin/manager ./cmd/manager
go build -o bin/bench-proxy ./hack/bench-proxy
go build -o bin/localcluster ./hack/localcluster

UP=127.0.0.1:18090
bin/bench-proxy upstream "$UP" & pids+=($!)
bin/bench-proxy bare 127.0.0.1:18091 "http://$UP" & pids+=($!); bare_a=$!
bin/bench-proxy bare 127.0.0.1:18092 "http://$UP" & pids+=($!); bare_b=$!

targets=("bare-A http://127.0.0.1:18091/default/bench/ $bare_a" "bare-B http://127.0.0.1:18092/default/bench/ $bare_b")

if command -v nginx >/dev/null; then
  cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server $UP; keepalive 64; }
  server {
    listen 127.0.0.1:18093;
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
  targets+=("nginx http://127.0.0.1:18093/default/bench/ $nginx_pid")
else
  echo "bench-proxy: nginx is not installed (apt-get install nginx-light): its row is skipped" >&2
fi

mkdir -p "$work/samples"
cat >"$work/samples/bench.yaml" <<YAML
apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: bench, namespace: default}
spec:
  upstream: {url: "http://$UP"}
YAML
bin/localcluster -samples "$work/samples" -write-kubeconfig "$work/kubeconfig" -- bin/manager --allow-url-upstreams \
  --proxy-bind-address 127.0.0.1:18094 --api-bind-address 127.0.0.1:18095 \
  --health-probe-bind-address 127.0.0.1:18096 --metrics-bind-address 0 >"$work/manager.log" 2>&1 & pids+=($!)
for _ in $(seq 600); do
  curl -sf -o /dev/null http://127.0.0.1:18094/default/bench/ && break
  sleep 0.5
done
curl -sf -o /dev/null http://127.0.0.1:18094/default/bench/ || { echo "bench-proxy: the manager did not come up"; tail -20 "$work/manager.log"; exit 1; }
manager_pid=$(pgrep -f -- "--proxy-bind-address 127.0.0.1:18094" | head -1)
targets+=("manager http://127.0.0.1:18094/default/bench/ $manager_pid")

# cpu PID: user+system microseconds of PID and its children processes (nginx's workers).
cpu() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(bin/bench-proxy cpu "$p")))
  done
  echo "$total"
}
# us VALUE: a wrk latency (e.g. 1.20ms, 850.00us, 1.01s) in microseconds.
us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000 }'; }

echo "round target req/s p50-us p99-us cpu-us/req" >"$work/results"
for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    read -r name url pid <<<"$t"
    before=$(cpu "$pid")
    out=$(wrk --latency -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$url")
    after=$(cpu "$pid")
    requests=$(echo "$out" | awk '/requests in/ { print $1 }')
    rps=$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')
    p50=$(us "$(echo "$out" | awk '$1 == "50%" { print $2 }')")
    p99=$(us "$(echo "$out" | awk '$1 == "99%" { print $2 }')")
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ { print }')
    [ -z "$errors" ] || echo "bench-proxy: $name round $round: $errors" >&2
    echo "$round $name $rps $p50 $p99 $(awk -v a="$after" -v b="$before" -v n="$requests" 'BEGIN { printf "%.1f", (a - b) / n }')" >>"$work/results"
    echo "round $round/$ROUNDS $name: $rps req/s" >&2
  done
done

echo
echo "Medians of $ROUNDS rounds (wrk -t$THREADS -c$CONNECTIONS -d$DURATION, 64-byte answers):"
awk -v unit=req -v rate=req/s -v what="request" -f hack/bench-medians.awk "$work/results"
echo
echo "Every round:"
column -t "$work/results"
