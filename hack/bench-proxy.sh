#!/usr/bin/env bash
# make bench-proxy: the proxy hop as a caller pays for it. Every server is
# its own process on loopback: a 64-byte upstream; two identical bare
# httputil.ReverseProxy fronts with a pooled buffer (bare-A, bare-B: their
# difference is the noise); nginx, when installed; and the real bin/manager
# on a local control plane with one breaker; as root also a bare proxy and a
# breaker reaching the upstream on a test host through a Service. wrk loads each in turn, in
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
BENCH=bench-proxy
. hack/bench-common.sh
bench_build

UP=127.0.0.1:18090
bin/bench-proxy upstream "$UP" & pids+=($!)
bin/bench-proxy bare 127.0.0.1:18091 "http://$UP" & pids+=($!); bare_a=$!
bin/bench-proxy bare 127.0.0.1:18092 "http://$UP" & pids+=($!); bare_b=$!

targets=("bare-A http://127.0.0.1:18091/default/bench/ $bare_a" "bare-B http://127.0.0.1:18092/default/bench/ $bare_b")

if bench_nginx 127.0.0.1:18093 "$UP"; then
  targets+=("nginx http://127.0.0.1:18093/default/bench/ $nginx_pid")
fi

# As root, a Service upstream too: the same 64-byte upstream on a test host
# (a network namespace; EndpointSlices cannot hold loopback addresses), a
# bare ReverseProxy reaching it (bare-S), and a breaker on a Service whose
# EndpointSlice holds it (manager-S).
testhost=
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
  bin/bench-proxy testhost "$work/testhost" & pids+=($!)
  for _ in $(seq 100); do [ -s "$work/testhost" ] && break; sleep 0.1; done
  testhost=$(cat "$work/testhost" 2>/dev/null || true)
fi
bench_breaker_sample "$UP"
if [ -n "$testhost" ]; then
  bin/bench-proxy bare 127.0.0.1:18097 "http://$testhost" & pids+=($!); bare_s=$!
  cat >"$work/samples/bench-svc.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: bench-svc, namespace: default}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-svc-1, namespace: default, labels: {kubernetes.io/service-name: bench-svc}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["${testhost%:*}"]}]
---
apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: bench-svc, namespace: default}
spec:
  upstream: {service: {name: bench-svc, port: http}}
YAML
else
  echo "bench-proxy: not root, or no ip: the Service upstream rows are skipped" >&2
fi
bench_manager 127.0.0.1:18094 127.0.0.1:18095 127.0.0.1:18096
targets+=("manager http://127.0.0.1:18094/default/bench/ $manager_pid")
if [ -n "$testhost" ]; then
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18094/default/bench-svc/ && break; sleep 0.2; done
  curl -sf -o /dev/null http://127.0.0.1:18094/default/bench-svc/ || { echo "bench-proxy: the Service upstream does not answer"; tail -20 "$work/manager.log"; exit 1; }
  targets+=("bare-S http://127.0.0.1:18097/default/bench-svc/ $bare_s" "manager-S http://127.0.0.1:18094/default/bench-svc/ $manager_pid")
fi

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
