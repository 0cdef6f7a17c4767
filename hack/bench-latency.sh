#!/usr/bin/env bash
# make bench-latency: the latency the proxy hop adds, as a caller feels it
# at a moderate, fixed rate. Every server is its own process on loopback:
# the 64-byte upstream of hack/bench-proxy (direct: no hop at all); a bare
# httputil.ReverseProxy in front of it (hack/bench-proxy bare); nginx, when
# installed; and the real bin/manager on a local control plane with one
# breaker (the start-up of hack/bench-proxy.sh, hack/bench-common.sh). The
# open-loop generator hack/bench-latency sends RATE requests a second over
# CONNECTIONS keep-alive connections to each in turn, after a WARMUP on the
# same connections, and times every request from its scheduled send time.
# Each round runs every target once, in an order rotated by one each round;
# a proxy's added latency is its percentile minus direct's in the same round.
#
#   ROUNDS=5 DURATION=10s RATE=1000 CONNECTIONS=10 WARMUP=1s TIMEOUT=2s hack/bench-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10s}"
RATE="${RATE:-1000}"
CONNECTIONS="${CONNECTIONS:-10}"
WARMUP="${WARMUP:-1s}"
TIMEOUT="${TIMEOUT:-2s}"

BENCH=bench-latency
. hack/bench-common.sh
bench_build
go build -o bin/bench-latency ./hack/bench-latency

UP=127.0.0.1:18290
bin/bench-proxy upstream "$UP" & pids+=($!)
bin/bench-proxy bare 127.0.0.1:18291 "http://$UP" & pids+=($!)
targets=("direct http://$UP/default/bench/" "bare http://127.0.0.1:18291/default/bench/")
if bench_nginx 127.0.0.1:18293 "$UP"; then
  targets+=("nginx http://127.0.0.1:18293/default/bench/")
fi
bench_breaker_sample "$UP"
bench_manager 127.0.0.1:18294 127.0.0.1:18295 127.0.0.1:18296
targets+=("manager http://127.0.0.1:18294/default/bench/")

# cpus: the jiffies the machine's CPUs were busy, the jiffies stolen by the
# hypervisor (a virtual CPU ready to run but not running), and all of them,
# since boot. A run's busy% and steal% tell a quiet machine from one where
# something else ran too, on it or on its host (the benchmark itself is in
# busy%: 10-20% of 2 cores).
cpus() { awk '$1 == "cpu" { b = $2 + $3 + $4 + $7 + $8; print b, $9, b + $9 + $5 + $6 }' /proc/stat; }

echo "round target count errors p50-ms p90-ms p99-ms max-ms busy% steal%" >"$work/results"
n=${#targets[@]}
for round in $(seq "$ROUNDS"); do
  for k in $(seq 0 $((n - 1))); do
    read -r name url <<<"${targets[$(((k + round - 1) % n))]}"
    read -r busy0 steal0 all0 < <(cpus)
    out=$(bin/bench-latency -rate "$RATE" -connections "$CONNECTIONS" -duration "$DURATION" \
      -warmup "$WARMUP" -timeout "$TIMEOUT" "$url")
    line=$(echo "$out" | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      print v["count"], v["errors"], v["p50"], v["p90"], v["p99"], v["max"] }')
    read -r busy1 steal1 all1 < <(cpus)
    load=$(awk -v b=$((busy1 - busy0)) -v s=$((steal1 - steal0)) -v a=$((all1 - all0)) \
      'BEGIN { if (a == 0) a = 1; printf "%.0f %.0f", 100 * b / a, 100 * s / a }')
    read -r count errors p50 p90 p99 _ <<<"$line"
    [ "$errors" = 0 ] || echo "$BENCH: $name round $round: $errors errors" >&2
    read -r busy stolen <<<"$load"
    echo "$round $name $line $load" >>"$work/results"
    echo "round $round/$ROUNDS $name: p50 $p50 p90 $p90 p99 $p99 ms ($count requests; CPUs $busy% busy, $stolen% stolen)" >&2
  done
done

echo
echo "Every round (bench-latency -rate $RATE -connections $CONNECTIONS -duration $DURATION, after a $WARMUP warm-up; 64-byte answers;
busy%, steal%: of all CPUs over the run, every process; stolen: by the hypervisor):"
column -t "$work/results"
echo
awk -f hack/bench-latency.awk "$work/results"
