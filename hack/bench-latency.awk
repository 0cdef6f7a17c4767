# bench-latency.awk: the summary of hack/bench-latency.sh. Input: its
# results file, a header line and then "round target count errors p50 p90
# p99 max" (milliseconds) per run; direct is the upstream without a hop.
# For every other target, the added latency of each round (its percentile
# minus direct's in the same round), as the median over the rounds and its
# spread (min-max); then the manager's added latency over the bare
# ReverseProxy's, a ratio of the medians (and the spread of the ratio
# round by round).
NR > 1 {
  if (!($2 in seen)) { order[++n] = $2; seen[$2] = 1 }
  for (q = 1; q <= 3; q++) p[$1, $2, q] = $(4 + q)
  ran[$1, $2] = 1; if (!($1 in rseen)) { rounds[++nr] = $1; rseen[$1] = 1 }
}
function sort(a, k,   i, j, t) {
  for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
}
function median(a, k) { sort(a, k); return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
# cell: "median (min-max)" of a[1..k], after which a is sorted.
function cell(a, k,   m) { m = median(a, k); return sprintf("%.3f (%.3f–%.3f)", m, a[1], a[k]) }
# added T Q: T's added latencies at percentile Q into list, their count returned.
function added(t, q,   i, r, k) {
  k = 0; delete list
  for (i = 1; i <= nr; i++) { r = rounds[i]; if (ran[r, t] && ran[r, "direct"]) list[++k] = p[r, t, q] - p[r, "direct", q] }
  return k
}
BEGIN { split("p50 p90 p99", name, " ") }
END {
  if (!("direct" in seen)) { print "bench-latency.awk: no direct runs"; exit 1 }
  printf "Added latency over direct in the same round, ms: median of %d rounds (min–max)\n\n", nr
  print "| target | p50 | p90 | p99 |"
  print "|---|---|---|---|"
  line = "| direct (itself, not added)"
  for (q = 1; q <= 3; q++) { k = 0; delete list; for (i = 1; i <= nr; i++) if (ran[rounds[i], "direct"]) list[++k] = p[rounds[i], "direct", q]
    line = line " | " cell(list, k) }
  print line " |"
  for (j = 1; j <= n; j++) { t = order[j]; if (t == "direct") continue
    line = "| " t
    for (q = 1; q <= 3; q++) { k = added(t, q); med[t, q] = median(list, k); line = line " | " cell(list, k) }
    print line " |" }
  if (!("bare" in seen)) exit 0
  print ""
  for (j = 1; j <= n; j++) { t = order[j]; if (t == "direct" || t == "bare") continue
    line = sprintf("%s/bare, added latency:", t); met = 1
    for (q = 1; q <= 3; q++) {
      k = 0; delete ratio
      for (i = 1; i <= nr; i++) { r = rounds[i]
        if (ran[r, t] && ran[r, "bare"] && ran[r, "direct"] && p[r, "bare", q] > p[r, "direct", q])
          ratio[++k] = (p[r, t, q] - p[r, "direct", q]) / (p[r, "bare", q] - p[r, "direct", q]) }
      if (med["bare", q] > 0) { x = med[t, q] / med["bare", q]; if (x > 0.7) met = 0; s = sprintf("%.2fx", x) } else { s = "n/a"; met = 0 }
      if (k > 0) { sort(ratio, k); s = s sprintf(" (rounds %.2f–%.2f)", ratio[1], ratio[k]) }
      line = line sprintf("%s %s %s", q > 1 ? "," : "", name[q], s)
    }
    if (t == "manager") line = line sprintf("; goal <= 0.7x at each: %s", met ? "met" : "not met")
    print line
  }
}
