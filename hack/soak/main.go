// Command soak runs the real manager for a long while under steady traffic
// and checks that it does not grow: it starts a local control plane, a local
// upstream and a webhook receiver on loopback, and bin/manager (with
// GOMEMLIMIT, as the install sets it); creates 100 CircuitBreakers, a tenth
// of which flap (their upstream fails for a few seconds, then recovers, over
// and over, so they open, half-open and close all the time: status writes,
// Events and webhook notifications); sends a bounded rate of calls over all
// of them from a few keep-alive workers, scrapes /metrics every 15 s as
// Prometheus does (gzip), and samples the manager every minute: RSS, its
// anonymous part, heap in use, goroutines, open file descriptors. At the end
// it says, for each series, whether every sample after the warm-up stayed
// within 10% (max/min) of the warm-up sample, and exits 1 if one did not.
//
//	go run ./hack/soak -duration 10m        (make soak DURATION=10m)
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/hack/localaddr"
	"github.com/circuitbreaker-io/operator/hack/procstat"
	"github.com/circuitbreaker-io/operator/internal/controlplane"
	"github.com/circuitbreaker-io/operator/internal/notify"
)

const (
	namespace   = "soak"
	scrapeEvery = 15 * time.Second // Prometheus's usual interval
	sampleEvery = time.Minute
	// flatWithin is the largest max/min ratio of a series after warm-up
	// that still counts as flat.
	flatWithin = 1.10
	// A flapping breaker's upstream answers 500 for flapFail of every
	// flapPeriod (each breaker at its own phase), 200 the rest of the time.
	flapPeriod = 15 * time.Second
	flapFail   = 5 * time.Second
)

type options struct {
	duration, warmup          time.Duration
	breakers, flapping        int
	rate, workers             int
	manager, memLimit, log    string
	failureThreshold          int32
	recoveryTimeout           time.Duration
	readyTimeout, callTimeout time.Duration
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long to run the traffic")
	flag.DurationVar(&o.warmup, "warmup", 0, "the warm-up: the first sample at or after it is the reference (0: min(2m, duration/4))")
	flag.IntVar(&o.breakers, "breakers", 100, "how many CircuitBreakers")
	flag.IntVar(&o.flapping, "flapping", 10, "how many of them flap")
	flag.IntVar(&o.rate, "rate", 200, "calls per second, in total")
	flag.IntVar(&o.workers, "workers", 4, "keep-alive workers sending the calls")
	flag.StringVar(&o.manager, "manager", "bin/manager", "the manager binary")
	flag.StringVar(&o.memLimit, "memlimit", "256MiB", "GOMEMLIMIT for the manager: the install sets it to the container's memory limit, 256 MiB")
	flag.StringVar(&o.log, "log", "", "write the manager's log to this file (default: a temporary one, removed at the end)")
	flag.Parse()
	o.failureThreshold, o.recoveryTimeout = 5, 2*time.Second
	o.readyTimeout, o.callTimeout = 2*time.Minute, 10*time.Second
	if o.warmup == 0 {
		o.warmup = min(2*time.Minute, o.duration/4)
	}
	if o.flapping > o.breakers || o.workers < 1 || o.rate < o.workers || o.duration < sampleEvery {
		fmt.Fprintln(os.Stderr, "soak: need flapping <= breakers, workers >= 1, rate >= workers, duration >= 1m")
		os.Exit(2)
	}
	notFlat, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	if len(notFlat) > 0 {
		fmt.Fprintf(os.Stderr, "soak: not flat after the warm-up: %s\n", strings.Join(notFlat, ", "))
		os.Exit(1)
	}
}

// flaps says whether breaker i is one of the flapping ones: every
// breakers/flapping-th, spread over the list.
func flaps(o options, i int) bool {
	if o.flapping == 0 {
		return false
	}
	step := o.breakers / o.flapping
	return i%step == 0 && i/step < o.flapping
}

func breakerName(i int) string { return fmt.Sprintf("cb-%03d", i) }

// upstream answers 200, except on a flapping breaker's path while its phase
// is failing; the phases are spread over the period so that the flappers
// do not all open at once.
func upstream(o options, start time.Time) *httptest.Server {
	phase := map[string]time.Duration{}
	for i, k := 0, 0; i < o.breakers; i++ {
		if flaps(o, i) {
			phase[breakerName(i)] = time.Duration(k) * flapPeriod / time.Duration(o.flapping)
			k++
		}
	}
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if offset, ok := phase[name]; ok && (time.Since(start)+offset)%flapPeriod < flapFail {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
}

func run(o options) (notFlat []string, err error) {
	ctx := context.Background()
	up := upstream(o, time.Now())
	defer up.Close()
	notifications := newNotifications()
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		notifications.add(body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer receiver.Close()

	env, err := controlplane.Start()
	if err != nil {
		return nil, err
	}
	defer func() { _ = env.Stop() }()
	dir, err := os.MkdirTemp("", "soak")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := controlplane.WriteAdminKubeconfig(env, kubeconfig); err != nil {
		return nil, err
	}
	c, err := client.New(env.Config, client.Options{Scheme: controlplane.Scheme()})
	if err != nil {
		return nil, err
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		return nil, err
	}
	for i := range o.breakers {
		if err := c.Create(ctx, &cbv1.CircuitBreaker{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: breakerName(i)},
			Spec: cbv1.CircuitBreakerSpec{
				Upstream:         cbv1.Upstream{URL: up.URL + "/" + breakerName(i)},
				FailureThreshold: o.failureThreshold,
				RecoveryTimeout:  &metav1.Duration{Duration: o.recoveryTimeout},
			},
		}); err != nil {
			return nil, err
		}
	}
	fmt.Printf("soak: %d CircuitBreakers (failureThreshold %d, recoveryTimeout %s), %d of them flapping (their upstream answers 500 for %s of every %s); "+
		"%d calls/s from %d keep-alive workers; a gzip scrape every %s; a sample every %s for %s; warm-up %s\n",
		o.breakers, o.failureThreshold, o.recoveryTimeout, o.flapping, flapFail, flapPeriod,
		o.rate, o.workers, scrapeEvery, sampleEvery, o.duration, o.warmup)

	proxyAddr, probeAddr, apiAddr, metricsAddr := localaddr.Free(), localaddr.Free(), localaddr.Free(), localaddr.Free()
	cmd := exec.Command(o.manager, "--kubeconfig", kubeconfig, "--allow-url-upstreams",
		"--metrics-bind-address", metricsAddr, "--metrics-secure=false",
		"--proxy-bind-address", proxyAddr, "--health-probe-bind-address", probeAddr, "--api-bind-address", apiAddr,
		"--notify-webhook", receiver.URL+"/hook", "--zap-log-level", "info")
	logPath := filepath.Join(dir, "manager.log")
	if o.log != "" {
		logPath = o.log
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "GOMEMLIMIT="+o.memLimit)
	fmt.Printf("the manager runs with GOMEMLIMIT=%s, as the install sets it from its memory limit, "+
		"and --notify-webhook to a local receiver answering 204\n", o.memLimit)
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		select {
		case waitErr := <-exited:
			_ = waitErr // it exited already: reported where it was seen
		default:
			_ = cmd.Process.Kill()
			killed := <-exited
			_ = killed // its exit status says it was killed, nothing more
		}
		if err != nil {
			printTail(logPath)
		}
	}()
	pid := cmd.Process.Pid
	if err := waitReady(probeAddr, o.readyTimeout, exited); err != nil {
		return nil, err
	}
	fmt.Printf("ready %s after start; RSS %.1f MiB\n", time.Since(started).Round(10*time.Millisecond), mibOf(procstat.RSS(pid)))

	// The traffic, bounded by the duration (and stopped after the last
	// sample): each worker sends its share of the rate over its share of
	// the breakers, in turn.
	trafficCtx, stopTraffic := context.WithTimeout(ctx, o.duration+time.Minute)
	defer stopTraffic()
	calls := newTally()
	var wg sync.WaitGroup
	caller := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.workers}, Timeout: o.callTimeout}
	interval := time.Duration(o.workers) * time.Second / time.Duration(o.rate)
	begin := time.Now()
	for w := range o.workers {
		wg.Go(func() {
			next := begin
			for i := w; ; i += o.workers {
				next = next.Add(interval)
				if behind := time.Since(next); behind > time.Second {
					next = time.Now() // no burst to catch up after a stall
				}
				select {
				case <-trafficCtx.Done():
					return
				case <-time.After(time.Until(next)):
				}
				k := i % o.breakers
				answer := call(trafficCtx, caller, proxyAddr, breakerName(k))
				if trafficCtx.Err() != nil {
					return // a call cut short by the stop is not the manager's error
				}
				calls.add(flaps(o, k), answer)
			}
		})
	}

	// A scrape every scrapeEvery; every sampleEvery (and at the end) a
	// sample, whose figures from the metrics are that scrape's.
	var samples []sample
	scrapes, scrapeErrors := 0, 0
	cpuBefore, _ := procstat.CPU(pid)
	lastSample := begin
	fmt.Printf("every %s (calls by answer and transitions since the traffic started):\n", sampleEvery)
	ticks := int(o.duration / scrapeEvery)
	for k := 1; k <= ticks; k++ {
		select {
		case err := <-exited:
			stopTraffic()
			wg.Wait()
			return nil, fmt.Errorf("the manager exited %s after the traffic started: %v", time.Since(begin).Round(time.Second), err)
		case <-time.After(time.Until(begin.Add(time.Duration(k) * scrapeEvery))):
		}
		families, err := scrape(metricsAddr)
		scrapes++
		if err != nil {
			scrapeErrors++
			fmt.Printf("  scrape %d failed: %v\n", scrapes, err)
			continue
		}
		at := time.Duration(k) * scrapeEvery
		if at%sampleEvery != 0 && k != ticks {
			continue
		}
		s, err := take(pid, families)
		if err != nil {
			return nil, err
		}
		s.at = at
		cpuNow, _ := procstat.CPU(pid)
		s.cpu = float64(cpuNow-cpuBefore) / float64(time.Since(lastSample))
		cpuBefore, lastSample = cpuNow, time.Now()
		s.notifications = notifications.String()
		samples = append(samples, s)
		fmt.Printf("  %5s  RSS %.1f MiB  anon %.1f MiB  heap in use %.1f MiB  live heap %.1f MiB  goroutines %.0f  fds %.0f  CPU %.0f%%  "+
			"calls %s  transitions %s  notifications %s\n",
			s.at, s.rss, s.anon, s.heap, s.live, s.goroutines, s.fds, 100*s.cpu, calls.String(), s.transitions, s.notifications)
	}
	stopTraffic()
	wg.Wait()
	fmt.Printf("%d scrapes (%d failed); calls: %s\n", scrapes, scrapeErrors, calls.String())
	fmt.Printf("calls to the %d steady breakers: %s; to the %d flapping ones: %s\n",
		o.breakers-o.flapping, calls.group(false), o.flapping, calls.group(true))
	if len(samples) > 0 {
		last := samples[len(samples)-1]
		fmt.Printf("transitions: %s; webhook notifications received: %s\n", last.transitions, last.notifications)
	}

	return verdicts(samples, o.warmup)
}

// verdicts prints, for each series, whether its samples from the warm-up's
// to the end are flat, and returns the names of those that are not.
func verdicts(samples []sample, warmup time.Duration) (notFlat []string, err error) {
	ref := slices.IndexFunc(samples, func(s sample) bool { return s.at >= warmup })
	if ref < 0 || ref == len(samples)-1 {
		return nil, fmt.Errorf("no sample after the warm-up's (%s) to compare with: run longer", warmup)
	}
	after := samples[ref:]
	fmt.Printf("after the warm-up (the sample at %s) to the end (%s), flat if every sample is within %.0f%% (max/min):\n",
		after[0].at, after[len(after)-1].at, 100*(flatWithin-1))
	for _, series := range []struct {
		name, unit string
		value      func(sample) float64
		format     string
	}{
		{"RSS", "MiB", func(s sample) float64 { return s.rss }, "%.1f"},
		{"anonymous RSS", "MiB", func(s sample) float64 { return s.anon }, "%.1f"},
		{"heap in use", "MiB", func(s sample) float64 { return s.heap }, "%.1f"},
		{"live heap (at the last GC)", "MiB", func(s sample) float64 { return s.live }, "%.1f"},
		{"goroutines", "", func(s sample) float64 { return s.goroutines }, "%.0f"},
		{"open fds", "", func(s sample) float64 { return s.fds }, "%.0f"},
	} {
		values := make([]float64, len(after))
		for i, s := range after {
			values[i] = series.value(s)
		}
		first, last := values[0], values[len(values)-1]
		lo, hi := slices.Min(values), slices.Max(values)
		ratio := hi / lo
		verdict := "flat"
		if lo <= 0 || ratio > flatWithin {
			verdict = "NOT FLAT"
			notFlat = append(notFlat, series.name)
		}
		unit := ""
		if series.unit != "" {
			unit = " " + series.unit
		}
		fmt.Printf("  %s: "+series.format+" → "+series.format+"%s (%+.1f%%), min "+series.format+" max "+series.format+" (max/min %.3f): %s\n",
			series.name, first, last, unit, 100*(last-first)/first, lo, hi, ratio, verdict)
	}
	return notFlat, nil
}

// sample is one minute's figures of the manager.
type sample struct {
	at                    time.Duration
	rss, anon, heap, live float64 // MiB
	goroutines, fds, cpu  float64
	transitions           transitions
	notifications         string
}

func take(pid int, families map[string]*dto.MetricFamily) (sample, error) {
	var s sample
	rss, err := procstat.RSS(pid)
	if err != nil {
		return s, err
	}
	anon, err := procstat.AnonRSS(pid)
	if err != nil {
		return s, err
	}
	fds, err := procstat.FDs(pid)
	if err != nil {
		return s, err
	}
	s.rss, s.anon, s.fds = float64(rss)/(1<<20), float64(anon)/(1<<20), float64(fds)
	goroutines, err := gauge(families, "go_goroutines")
	if err != nil {
		return s, err
	}
	heap, err := gauge(families, "go_memstats_heap_inuse_bytes")
	if err != nil {
		return s, err
	}
	live, err := gauge(families, "go_gc_heap_live_bytes")
	if err != nil {
		return s, err
	}
	s.goroutines, s.heap, s.live = goroutines, heap/(1<<20), live/(1<<20)
	s.transitions = transitions{}
	for _, m := range families["circuitbreaker_transitions_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "to" {
				s.transitions[l.GetValue()] += int64(m.GetCounter().GetValue())
			}
		}
	}
	return s, nil
}

// notifications counts the webhook's POSTs by the state they say the
// breaker went to, and those seen before (the same breaker, transition and
// time).
type notifications struct {
	mu         sync.Mutex
	to         transitions
	seen       map[notify.Notification]bool
	repeated   transitions
	unreadable int64
}

func newNotifications() *notifications {
	return &notifications{to: transitions{}, repeated: transitions{}, seen: map[notify.Notification]bool{}}
}

func (n *notifications) add(body []byte) {
	var doc notify.Notification
	err := json.Unmarshal(body, &doc)
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case err != nil:
		n.unreadable++
	case n.seen[doc]:
		n.repeated[doc.To]++
	default:
		n.seen[doc] = true
		n.to[doc.To]++
	}
}

func (n *notifications) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.to.String()
	if len(n.repeated) > 0 {
		s += ", and repeated " + n.repeated.String()
	}
	if n.unreadable > 0 {
		s += fmt.Sprintf(", and %d unreadable", n.unreadable)
	}
	return s
}

// transitions counts the breakers' transitions by the state they went to.
type transitions map[string]int64

func (t transitions) String() string { return countsString(t, "to %s %d") }

// tally counts the calls by answer ("200", "503", or "error"), for the
// steady and the flapping breakers apart.
type tally struct {
	mu     sync.Mutex
	counts [2]map[string]int64 // [0] steady, [1] flapping
}

func newTally() *tally { return &tally{counts: [2]map[string]int64{{}, {}}} }

func (t *tally) add(flapping bool, answer string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if flapping {
		t.counts[1][answer]++
	} else {
		t.counts[0][answer]++
	}
}

func (t *tally) group(flapping bool) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if flapping {
		return format(t.counts[1])
	}
	return format(t.counts[0])
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	all := maps.Clone(t.counts[0])
	for k, v := range t.counts[1] {
		all[k] += v
	}
	return format(all)
}

func format(counts map[string]int64) string { return countsString(counts, "%s: %d") }

// countsString prints the total of counts, then each count by its key in
// order, as part (a format of the key and the count) says.
func countsString[M ~map[string]int64](counts M, part string) string {
	var total int64
	parts := make([]string, 0, len(counts))
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		total += counts[k]
		parts = append(parts, fmt.Sprintf(part, k, counts[k]))
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", "))
}

// call sends one call through a breaker, and returns its answer's status
// code, or "error".
func call(ctx context.Context, caller *http.Client, proxyAddr, name string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+proxyAddr+"/"+namespace+"/"+name+"/x", nil)
	if err != nil {
		return "error"
	}
	resp, err := caller.Do(req)
	if err != nil {
		return "error"
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return fmt.Sprint(resp.StatusCode)
}

func waitReady(probeAddr string, timeout time.Duration, exited <-chan error) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("the manager exited before it was ready: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := http.Get("http://" + probeAddr + "/readyz")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
	return fmt.Errorf("the manager was not ready after %s", timeout)
}

// scrape reads the manager's metrics as Prometheus does: gzip-compressed.
func scrape(addr string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	// Set by hand, the transport leaves the decompressing to us.
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics answered %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var text io.Reader = bytes.NewReader(body)
	if resp.Header.Get("Content-Encoding") == "gzip" {
		if text, err = gzip.NewReader(text); err != nil {
			return nil, err
		}
	} else {
		return nil, errors.New("/metrics answered without gzip")
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(text)
}

// gauge is an unlabelled gauge's value.
func gauge(families map[string]*dto.MetricFamily, name string) (float64, error) {
	m := families[name].GetMetric()
	if len(m) == 0 {
		return 0, fmt.Errorf("the metrics have no %s", name)
	}
	return m[0].GetGauge().GetValue(), nil
}

func mibOf(b int64, err error) float64 {
	if err != nil {
		return 0
	}
	return float64(b) / (1 << 20)
}

// printTail prints the end of the manager's log, to see why a run failed.
func printTail(path string) {
	log, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(log), "\n"), "\n")
	fmt.Fprintf(os.Stderr, "soak: the manager's last log lines:\n%s\n", strings.Join(lines[max(0, len(lines)-20):], "\n"))
}
