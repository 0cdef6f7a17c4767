# bench-medians.awk: the medians table of hack/bench-proxy.sh and
# hack/bench-grpc.sh. Input: their results file, a header line and then
# "round front rate p50-us p99-us cpu-us [...]" per round. -v unit= names
# what CPU is counted per (req, call), -v rate= heads the rate column
# (req/s, calls/s); -v what= says what the manager's ratio is
# of (e.g. "request").
NR > 1 {
  rps[$2] = rps[$2] " " $3; p50[$2] = p50[$2] " " $4; p99[$2] = p99[$2] " " $5; cpu[$2] = cpu[$2] " " $6
  if (!($2 in seen)) { order[++n] = $2; seen[$2] = 1 }
  roundcpu[$1, $2] = $6; if (!($1 in rseen)) { rounds[++nr] = $1; rseen[$1] = 1 }
}
function median(list,   a, k, i, j, t) {
  k = split(list, a, " ")
  for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
  return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
}
END {
  printf "%-8s %10s %8s %8s %13s\n", "front", rate, "p50 us", "p99 us", "CPU us/" unit
  for (i = 1; i <= n; i++) { t = order[i]; m[t] = median(cpu[t]); r[t] = median(rps[t])
    printf "%-8s %10.0f %8.0f %8.0f %13.1f\n", t, r[t], median(p50[t]), median(p99[t]), m[t] }
  bare = (m["bare-A"] + m["bare-B"]) / 2
  printf "\nA/A gap: %.1f%%\n", 100 * (m["bare-A"] - m["bare-B"]) / bare
  printf "manager CPU per %s: %.2fx the bare baseline (goal <= 1.05x)\n", what, m["manager"] / bare
  # Each round's own ratio, against the two bare fronts loaded just before
  # it: drift slower than a round cancels out of it.
  list = ""
  for (i = 1; i <= nr; i++) {
    q = rounds[i]
    if (((q, "manager") in roundcpu) && ((q, "bare-A") in roundcpu) && ((q, "bare-B") in roundcpu)) {
      ratio = roundcpu[q, "manager"] / ((roundcpu[q, "bare-A"] + roundcpu[q, "bare-B"]) / 2)
      list = list " " sprintf("%.2f", ratio)
    }
  }
  if (list != "") printf "each round's ratio:%s; their median %.2fx\n", list, median(list)
  if ("bare-S" in m && "manager-S" in m) {
    printf "with a Service upstream (a test host): manager CPU per %s %.2fx the bare baseline reaching the same host (goal <= 1.05x)\n", what, m["manager-S"] / m["bare-S"]
  }
  if ("nginx" in m) {
    printf "manager throughput: %.2fx nginx (goal >= 0.8x); CPU per %s: %.2fx nginx (goal <= 1.5x)\n", r["manager"] / r["nginx"], what, m["manager"] / m["nginx"]
  }
}
