#!/usr/bin/env bash
# make bench-grpc: gRPC unary calls through the proxy as a caller pays for
# them, h2c both ways. Every server is its own process on loopback: a gRPC
# health upstream; two identical bare httputil.ReverseProxy fronts speaking
# h2c to callers and upstream (bare-A, bare-B: their difference is the
# noise); and the real bin/manager on a local control plane with one
# exposed breaker (protocol h2c), called by its exposed name. A Go gRPC
# load generator (hack/bench-grpc load) loads each in turn, in interleaved
# rounds, and each server's CPU per call is read from /proc.
#
#   ROUNDS=3 DURATION=10s CONNECTIONS=4 CONCURRENCY=64 hack/bench-grpc.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-4}"
CONCURRENCY="${CONCURRENCY:-64}"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

go build -o bin/manager ./cmd/manager
go build -o bin/bench-grpc ./hack/bench-grpc
go build -o bin/bench-proxy ./hack/bench-proxy
go build -o bin/localcluster ./hack/localcluster

# The fronts run on CPU 1, the load, the upstream and the control plane on
# CPU 0 (when there are two and taskset is there): a front's CPU per call
# is then not inflated by the others', which share no core with it.
front="" load=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  front="taskset -c 1" load="taskset -c 0"
fi

UP=127.0.0.1:18190
$load bin/bench-grpc upstream "$UP" & pids+=($!)
$front bin/bench-grpc bare 127.0.0.1:18191 "http://$UP" & pids+=($!); bare_a=$!
$front bin/bench-grpc bare 127.0.0.1:18192 "http://$UP" & pids+=($!); bare_b=$!
targets=("bare-A 127.0.0.1:18191 - $bare_a" "bare-B 127.0.0.1:18192 - $bare_b")

mkdir -p "$work/samples"
cat >"$work/samples/bench.yaml" <<YAML
apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: bench, namespace: default}
spec:
  upstream: {url: "http://$UP", protocol: h2c}
  expose: {}
YAML
# The control plane runs beside the load (on CPU 0), not beside the fronts.
$load bin/localcluster -samples "$work/samples" -write-kubeconfig "$work/kubeconfig" -- $front bin/manager --allow-url-upstreams \
  --proxy-bind-address 127.0.0.1:18194 --api-bind-address 127.0.0.1:18195 \
  --health-probe-bind-address 127.0.0.1:18196 --metrics-bind-address 0 >"$work/manager.log" 2>&1 & pids+=($!)
ready=""
for _ in $(seq 600); do
  if out=$(bin/bench-grpc load 127.0.0.1:18194 bench-breaker.default 100ms 1 1 2>/dev/null) && [ "$(echo "$out" | awk '{ print $2 }')" = 0 ] && [ "$(echo "$out" | awk '{ print $1 }')" != 0 ]; then
    ready=yes
    break
  fi
  sleep 0.5
done
[ -n "$ready" ] || { echo "bench-grpc: the manager did not come up"; tail -20 "$work/manager.log"; exit 1; }
manager_pid=$(pgrep -f -- "^bin/manager .*--proxy-bind-address 127.0.0.1:18194" | head -1)
[ -n "$front" ] && taskset -a -p -c 1 "$manager_pid" >/dev/null
targets+=("manager 127.0.0.1:18194 bench-breaker.default $manager_pid")

echo "round target calls/s p50-us p99-us cpu-us/call errors" >"$work/results"
for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    read -r name addr authority pid <<<"$t"
    before=$(bin/bench-proxy cpu "$pid")
    read -r calls errors p50 p99 < <($load bin/bench-grpc load "$addr" "$authority" "$DURATION" "$CONNECTIONS" "$CONCURRENCY")
    after=$(bin/bench-proxy cpu "$pid")
    secs=$(awk -v d="$DURATION" 'BEGIN { print d + 0 }')
    echo "$round $name $(awk -v c="$calls" -v s="$secs" 'BEGIN { printf "%.0f", c / s }') $p50 $p99 $(awk -v a="$after" -v b="$before" -v n="$calls" 'BEGIN { printf "%.1f", (a - b) / n }') $errors" >>"$work/results"
    echo "round $round/$ROUNDS $name: $calls calls, $errors errors" >&2
  done
done

echo
echo "Medians of $ROUNDS rounds ($CONCURRENCY callers over $CONNECTIONS connections, $DURATION each, unary Check):"
awk -v unit=call -v rate=calls/s -v what="gRPC call" -f hack/bench-medians.awk "$work/results"
echo
echo "Every round:"
column -t "$work/results"
