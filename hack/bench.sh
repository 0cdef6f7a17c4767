#!/usr/bin/env bash
# Runs the benchmarks of docs/benchmarks.md in interleaved rounds (every
# variant once per round, so drift hits all alike) and summarises them with
# benchstat. Raw output goes to bin/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-6}"
mkdir -p bin/bench
[ -x bin/benchstat ] || GOBIN="$PWD/bin" go install golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
: > bin/bench/breaker.txt
: > bin/bench/proxy.txt
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  go test -run '^$' -bench . -benchmem -count 1 ./internal/breaker/ >> bin/bench/breaker.txt
  go test -run '^$' -bench . -benchmem -count 1 ./internal/proxy/ >> bin/bench/proxy.txt
done
bin/benchstat bin/bench/proxy.txt
bin/benchstat bin/bench/breaker.txt
