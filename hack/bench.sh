#!/usr/bin/env bash
# Runs the benchmarks of docs/benchmarks.md in interleaved rounds (every
# variant once per round, so drift hits all alike) and summarises them with
# benchstat. Raw output goes to bin/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-6}"
BENCHTIME="${BENCHTIME:-1s}"
PACKAGES="${PACKAGES:-breaker proxy}"
mkdir -p bin/bench
[ -x bin/benchstat ] || GOBIN="$PWD/bin" go install golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
for pkg in $PACKAGES; do : > "bin/bench/$pkg.txt"; done
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for pkg in $PACKAGES; do
    go test -run '^$' -bench . -benchmem -benchtime "$BENCHTIME" -count 1 "./internal/$pkg/" >> "bin/bench/$pkg.txt"
  done
done
for pkg in $PACKAGES; do bin/benchstat "bin/bench/$pkg.txt"; done
