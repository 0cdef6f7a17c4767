// Command bench-scale measures the manager at scale, as a user would see
// it: it starts a local control plane, creates N CircuitBreakers, measures
// how fast a bare client-go loop can patch their status (the API server's
// own limit), then starts the real bin/manager and reports the time until
// /readyz passes (every route), the time until every status is written,
// the status write rate, the manager's RSS and its idle CPU; then measures
// the bare loops again, so that the manager is compared with baselines
// taken on both sides of it.
//
//	go run ./hack/bench-scale -n 10000        (make bench-scale N=10000)
//
// With BENCH_SCALE_PROFILES=<dir> it also saves 15-second CPU profiles of
// the API server while the watched bare loop writes and while the manager
// does (watched-loop.pprof, manager.pprof), to see where its time goes.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/hack/localaddr"
	"github.com/circuitbreaker-io/operator/hack/procstat"
	"github.com/circuitbreaker-io/operator/internal/controlplane"
)

func main() {
	n := flag.Int("n", 1000, "how many CircuitBreakers")
	perNamespace := flag.Int("per-namespace", 500, "breakers per namespace")
	workers := flag.Int("workers", 32, "concurrent creates and patches")
	manager := flag.String("manager", "bin/manager", "the manager binary")
	idle := flag.Duration("idle", 20*time.Second, "how long to watch the manager idle after every status is written")
	services := flag.Bool("services", false, "every breaker on a Service of its own with a 3-endpoint EndpointSlice "+
		"(test hosts in 198.18.0.0/15, never dialled: the busy phase is skipped)")
	memLimit := flag.String("memlimit", "256MiB", "GOMEMLIMIT for the manager: the install sets it to the container's memory limit, 256 MiB")
	busy := flag.Duration("busy", 60*time.Second, "how long to run traffic over every breaker with a scrape every 15 s, after the idle phase")
	flag.Parse()
	o := options{n: *n, perNamespace: *perNamespace, workers: *workers, manager: *manager,
		idle: *idle, busy: *busy, memLimit: *memLimit, services: *services}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-scale:", err)
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	n, perNamespace, workers int
	manager                  string
	idle, busy               time.Duration
	memLimit                 string
	services                 bool
}

func run(o options) error {
	n, perNamespace, workers, manager, memLimit := o.n, o.perNamespace, o.workers, o.manager, o.memLimit
	ctx := context.Background()
	// Every breaker's upstream answers 200 from here, so that the traffic
	// phase gives every breaker its request series, as a busy fleet has.
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer upstream.Close()
	env, err := controlplane.Start()
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	dir, err := os.MkdirTemp("", "bench-scale")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := controlplane.WriteAdminKubeconfig(env, kubeconfig); err != nil {
		return err
	}
	cfg := *env.Config
	cfg.QPS, cfg.Burst = -1, 0 // no client-side limit: the API server's is the one measured
	c, err := client.New(&cfg, client.Options{Scheme: controlplane.Scheme()})
	if err != nil {
		return err
	}

	keys := make([]types.NamespacedName, n)
	for i := range n {
		keys[i] = types.NamespacedName{Namespace: fmt.Sprintf("scale-%03d", i/perNamespace), Name: fmt.Sprintf("cb-%05d", i)}
	}
	for ns := 0; ns*perNamespace < n; ns++ {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-%03d", ns)}}); err != nil {
			return err
		}
	}
	start := time.Now()
	if err := parallel(workers, keys, func(k types.NamespacedName) error { return create(ctx, c, k, upstream.URL, o.services) }); err != nil {
		return err
	}
	fmt.Printf("created %d %s in %s (%.0f/s)\n", n, o.breakers(), since(start), float64(n)/time.Since(start).Seconds())

	// The API server's status write rate for a bare client-go loop: the
	// baseline the manager's rate is compared with. Each patch really
	// writes, as the manager's first write of a status does: a Ready
	// condition and an upstream (the manager later writes its own over
	// them; state and observedGeneration, which say a status is the
	// manager's, are left alone). A patch that changes nothing
	// ({"failureCount":0}, the previous baseline) is answered without a
	// write to etcd or a watch event, and is measured too, for reference.
	writeAll := func(round string) (float64, error) {
		now := time.Now().UTC().Format(time.RFC3339)
		start := time.Now()
		err := parallel(workers, keys, func(k types.NamespacedName) error {
			cb := &cbv1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name}}
			body := fmt.Sprintf(`{"status":{"upstream":"http://%s.%s.bench:8080","conditions":[{"type":"Ready","status":"False",`+
				`"reason":"Bench","message":"written by the bare client-go loop, %s","lastTransitionTime":%q,"observedGeneration":1}]}}`,
				k.Name, k.Namespace, round, now)
			return c.Status().Patch(ctx, cb, client.RawPatch(types.MergePatchType, []byte(body)))
		})
		return float64(n) / time.Since(start).Seconds(), err
	}
	bare, err := writeAll("unwatched")
	if err != nil {
		return err
	}
	fmt.Printf("bare client-go status patches that write (%d workers): %.0f writes/s\n", workers, bare)
	// The same loop while an informer watches the resources, as every
	// controller's does (the manager's own cache): each write is then also
	// a watch event the API server encodes and sends, and the informer
	// decodes, on the same 2 cores.
	var events atomic.Int64
	stopWatching, err := watch(&cfg, func(*cbv1.CircuitBreaker) { events.Add(1) })
	if err != nil {
		return err
	}
	profiled := profileAPIServer(&cfg, "watched-loop")
	watched, err := writeAll("watched")
	profiled()
	stopWatching()
	if err != nil {
		return err
	}
	fmt.Printf("bare client-go status patches that write, with an informer watching (%d workers): %.0f writes/s (%d events seen)\n",
		workers, watched, events.Load())
	start = time.Now()
	if err := parallel(workers, keys, func(k types.NamespacedName) error {
		cb := &cbv1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name}}
		return c.Status().Patch(ctx, cb, client.RawPatch(types.MergePatchType, []byte(`{"status":{"failureCount":0}}`)))
	}); err != nil {
		return err
	}
	fmt.Printf("bare client-go status patches that change nothing (%d workers): %.0f/s (no write: for reference only)\n",
		workers, float64(n)/time.Since(start).Seconds())

	// The manager's progress is read from its own metrics (client-go's
	// count of PATCH requests that succeeded: at start its only PATCHes are
	// status writes), not from a watch or listing of our own: either would
	// be a second watcher or lister loading the API server being measured,
	// which the bare loops above did not have. Once the count reaches N, a
	// single listing checks that every status really is written.
	proxyAddr, probeAddr, apiAddr, metricsAddr := localaddr.Free(), localaddr.Free(), localaddr.Free(), localaddr.Free()
	cmd := exec.Command(manager, "--kubeconfig", kubeconfig, "--allow-url-upstreams",
		"--metrics-bind-address", metricsAddr, "--metrics-secure=false",
		"--proxy-bind-address", proxyAddr, "--health-probe-bind-address", probeAddr, "--api-bind-address", apiAddr, "--zap-log-level", "info")
	logFile, err := os.Create(filepath.Join(dir, "manager.log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "GOMEMLIMIT="+memLimit)
	fmt.Printf("the manager runs with GOMEMLIMIT=%s, as the install sets it from its memory limit\n", memLimit)
	start = time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid

	var ready, all time.Duration
	lastProgress := time.Now()
	for {
		if ready == 0 {
			if resp, err := http.Get("http://" + probeAddr + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ready = time.Since(start)
					profiled = profileAPIServer(&cfg, "manager")
					fmt.Printf("ready (every route) %s after start, RSS %s\n", ready.Round(10*time.Millisecond), rss(pid))
				}
			}
		}
		patched := 0
		if ready != 0 {
			patched = patchesOK(metricsAddr)
			if time.Since(lastProgress) >= 5*time.Second {
				fmt.Printf("  %s after start: %d status writes\n", since(start), patched)
				lastProgress = time.Now()
			}
		}
		if ready != 0 && patched >= n {
			all = time.Since(start) // the listing below is the harness's time, not the manager's
			missing, err := unwritten(ctx, c, n)
			if err != nil {
				return err
			}
			if missing == 0 {
				break
			}
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("after 10 minutes the manager made %d status writes of %d", patchesOK(metricsAddr), n)
		}
		time.Sleep(progressInterval(ready))
	}
	profiled()
	rate := float64(n) / all.Seconds()
	fmt.Printf("every status written %s after start: %.0f writes/s, %.0f%% of the bare loop's rate, %.0f%% of the watched one; RSS %s\n",
		all.Round(10*time.Millisecond), rate, 100*rate/bare, 100*rate/watched, rss(pid))
	fmt.Printf("API requests the manager made, by method and code: %v\n", requests(metricsAddr))
	if err := idleThenBusy(o, keys, proxyAddr, apiAddr, metricsAddr, pid); err != nil {
		return err
	}

	// The bare loops once more, the manager stopped: the machine drifts, and
	// the API server slows as its history grows, between the first loops and
	// the manager's phase, so the baselines are measured on both sides of it
	// and the manager is compared with their means.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	bareAfter, err := writeAll("unwatched, after the manager")
	if err != nil {
		return err
	}
	stopWatching, err = watch(&cfg, func(*cbv1.CircuitBreaker) {})
	if err != nil {
		return err
	}
	watchedAfter, err := writeAll("watched, after the manager")
	stopWatching()
	if err != nil {
		return err
	}
	fmt.Printf("after the manager, bare client-go status patches that write: %.0f writes/s; with an informer watching: %.0f writes/s\n",
		bareAfter, watchedAfter)
	fmt.Printf("the manager's rate against the means of the runs before and after it: %.0f%% of the bare loop's (%.0f/s), %.0f%% of the watched one's (%.0f/s)\n",
		200*rate/(bare+bareAfter), (bare+bareAfter)/2, 200*rate/(watched+watchedAfter), (watched+watchedAfter)/2)
	return nil
}

// watch starts an informer on CircuitBreakers that hands each object it
// sees change to seen, and returns a function that stops it.
func watch(cfg *rest.Config, seen func(*cbv1.CircuitBreaker)) (func(), error) {
	ca, err := cache.New(cfg, cache.Options{Scheme: controlplane.Scheme(), DefaultTransform: cache.TransformStripManagedFields()})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	informer, err := ca.GetInformer(ctx, &cbv1.CircuitBreaker{})
	if err != nil {
		cancel()
		return nil, err
	}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) { seen(obj.(*cbv1.CircuitBreaker)) },
	}); err != nil {
		cancel()
		return nil, err
	}
	go func() { _ = ca.Start(ctx) }()
	if !ca.WaitForCacheSync(ctx) {
		cancel()
		return nil, fmt.Errorf("informer did not sync")
	}
	return cancel, nil
}

// patchesOK is the manager's count of PATCH requests that succeeded, read
// from its metrics endpoint; 0 while it cannot be read.
// breakers says what was created.
func (o options) breakers() string {
	if o.services {
		return "CircuitBreakers, each with a Service and a 3-endpoint EndpointSlice,"
	}
	return "CircuitBreakers"
}

// idleThenBusy watches the manager idle, then, for URL upstreams, busy.
func idleThenBusy(o options, keys []types.NamespacedName, proxyAddr, apiAddr, metricsAddr string, pid int) error {
	cpuBefore := cpu(pid)
	time.Sleep(o.idle)
	fmt.Printf("after %s idle: RSS %s, CPU %.1f%% of a core\n", o.idle, rss(pid), 100*float64(cpu(pid)-cpuBefore)/float64(o.idle))
	// What the RSS holds beyond the live heap is the collector's headroom
	// (the heap may grow to twice the live heap before a cycle) and what
	// the start-up listing left for the scavenger to return.
	if live, inUse, err := heap(metricsAddr); err == nil {
		fmt.Printf("live heap at the last GC: %.1f MiB, heap in use %.1f MiB\n", live/(1<<20), inUse/(1<<20))
	}
	if o.services {
		fmt.Println("busy phase skipped: the Service upstreams' endpoints are test hosts no traffic may reach from here")
		return nil
	}
	return underTraffic(keys, proxyAddr, apiAddr, metricsAddr, pid, o.busy)
}

// create makes breaker k: on a URL upstream under upstreamURL, or with
// services on a headless Service of its own (ClusterIPs would run out)
// whose EndpointSlice has 3 ready endpoints at test hosts, as a Deployment
// of 3 pods gives.
func create(ctx context.Context, c client.Client, k types.NamespacedName, upstreamURL string, services bool) error {
	cb := &cbv1.CircuitBreaker{
		ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name},
		Spec:       cbv1.CircuitBreakerSpec{Upstream: cbv1.Upstream{URL: upstreamURL + "/" + k.Name}},
	}
	if !services {
		return c.Create(ctx, cb)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	if err := c.Create(ctx, svc); err != nil {
		return err
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: k.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
	}
	for i := range 3 {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("198.18.0.%d", i+1)}})
	}
	if err := c.Create(ctx, slice); err != nil {
		return err
	}
	cb.Spec.Upstream = cbv1.Upstream{Service: &cbv1.ServiceUpstream{Name: k.Name, Port: intstr.FromString("http")}}
	return c.Create(ctx, cb)
}

// progressInterval is how often the manager's progress is read: reading
// its metrics costs it CPU (the API server's, on the same 2 cores), so
// after ready four times a second is enough.
func progressInterval(ready time.Duration) time.Duration {
	if ready == 0 {
		return 50 * time.Millisecond
	}
	return 250 * time.Millisecond
}

// scrapeEvery is Prometheus's usual scrape interval.
const scrapeEvery = 15 * time.Second

// underTraffic sends a call through every breaker (so each has its request
// series), measures what one scrape and one dashboard poll allocate in the
// manager, then runs traffic over every breaker for busy with a scrape every
// scrapeEvery, sampling RSS each second.
func underTraffic(keys []types.NamespacedName, proxyAddr, apiAddr, metricsAddr string, pid int, busy time.Duration) error {
	caller := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}, Timeout: 10 * time.Second}
	call := func(k types.NamespacedName) error {
		resp, err := caller.Get("http://" + proxyAddr + "/" + k.Namespace + "/" + k.Name + "/x")
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s answered %s", k, resp.Status)
		}
		return nil
	}
	start := time.Now()
	if err := parallel(8, keys, call); err != nil {
		return err
	}
	fmt.Printf("a call through each of the %d breakers in %s; RSS %s\n", len(keys), since(start), rss(pid))

	// What a scrape allocates: the difference between the allocation
	// counters two consecutive scrapes report (each is read while that
	// scrape gathers). A poll's: the difference around it, less a scrape's.
	const repeats = 5
	scrapeAllocs := make([]float64, 0, repeats)
	first, size, series, err := scrape(metricsAddr)
	if err != nil {
		return err
	}
	last := first
	for range repeats {
		next, _, _, err := scrape(metricsAddr)
		if err != nil {
			return err
		}
		scrapeAllocs = append(scrapeAllocs, next-last)
		last = next
	}
	slices.Sort(scrapeAllocs)
	perScrape := scrapeAllocs[repeats/2]
	fmt.Printf("a scrape: %d series, %.1f MiB of text, allocates %.1f MiB in the manager (median of %d: %s)\n",
		series, float64(size)/(1<<20), perScrape/(1<<20), repeats, mib(scrapeAllocs))
	pollAllocs := make([]float64, 0, repeats)
	pollSize := 0
	for range repeats {
		before, _, _, err := scrape(metricsAddr)
		if err != nil {
			return err
		}
		if pollSize, err = poll(apiAddr); err != nil {
			return err
		}
		after, _, _, err := scrape(metricsAddr)
		if err != nil {
			return err
		}
		pollAllocs = append(pollAllocs, after-before-perScrape)
	}
	slices.Sort(pollAllocs)
	fmt.Printf("a dashboard poll (GET /api/circuit-breakers): %.1f MiB of JSON, allocates %.1f MiB in the manager (median of %d: %s)\n",
		float64(pollSize)/(1<<20), pollAllocs[repeats/2]/(1<<20), repeats, mib(pollAllocs))

	// Traffic over every breaker in turn, a scrape every scrapeEvery.
	var calls, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; ; i += 4 {
				select {
				case <-stop:
					return
				default:
				}
				calls.Add(1)
				if call(keys[i%len(keys)]) != nil {
					failed.Add(1)
				}
			}
		})
	}
	peak, peakAnon := 0.0, 0.0
	cpuBefore := cpu(pid)
	busyStart := time.Now()
	nextScrape := time.Now()
	scrapes := 0
	for end := time.Now().Add(busy); time.Now().Before(end); time.Sleep(time.Second) {
		if !time.Now().Before(nextScrape) {
			if _, _, _, err := scrape(metricsAddr); err != nil {
				close(stop)
				wg.Wait()
				return err
			}
			scrapes++
			nextScrape = nextScrape.Add(scrapeEvery)
		}
		if b, err := procstat.RSS(pid); err == nil {
			peak = max(peak, float64(b)/(1<<20))
		}
		if b, err := procstat.AnonRSS(pid); err == nil {
			peakAnon = max(peakAnon, float64(b)/(1<<20))
		}
	}
	close(stop)
	wg.Wait()
	busyCPU := float64(cpu(pid)-cpuBefore) / float64(time.Since(busyStart))
	live, inUse, err := heap(metricsAddr)
	if err == nil {
		fmt.Printf("live heap at the last GC: %.1f MiB\n", live/(1<<20))
	}
	fmt.Printf("%s of traffic over every breaker (%d calls, %d failed) with %d scrapes: "+
		"peak RSS %.1f MiB (anonymous %.1f MiB), after %s; heap in use %.1f MiB; CPU %.0f%% of a core\n",
		busy, calls.Load(), failed.Load(), scrapes, peak, peakAnon, rss(pid), inUse/(1<<20), 100*busyCPU)
	return nil
}

// scrape reads the manager's metrics as Prometheus does (gzip), and returns
// the Go allocation counter it reports, the text's size and its series.
func scrape(addr string) (allocated float64, size, series int, err error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, 0, err
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return 0, 0, 0, err
	}
	for _, f := range families {
		series += len(f.GetMetric())
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, m := range f.GetMetric() {
				series += len(m.GetHistogram().GetBucket()) + 1 // a _bucket series each, then _sum and _count
			}
		}
	}
	m := families["go_memstats_alloc_bytes_total"].GetMetric()
	if len(m) == 0 {
		return 0, 0, 0, fmt.Errorf("the metrics have no go_memstats_alloc_bytes_total")
	}
	return m[0].GetCounter().GetValue(), len(body), series, nil
}

// heap reads the live heap (at the last GC) and the heap in use from one
// scrape of the manager's metrics; an error when there is no live heap
// (the heap in use is then 0 if it is missing too).
func heap(addr string) (live, inUse float64, err error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	if m := families["go_memstats_heap_inuse_bytes"].GetMetric(); len(m) > 0 {
		inUse = m[0].GetGauge().GetValue()
	}
	m := families["go_gc_heap_live_bytes"].GetMetric()
	if len(m) == 0 {
		return 0, inUse, fmt.Errorf("the metrics have no go_gc_heap_live_bytes")
	}
	return m[0].GetGauge().GetValue(), inUse, nil
}

// poll reads the breaker list as the dashboard does, and returns its size.
func poll(addr string) (int, error) {
	resp, err := http.Get("http://" + addr + "/api/circuit-breakers")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("the API answered %s", resp.Status)
	}
	return int(n), err
}

func mib(values []float64) string {
	var b strings.Builder
	for i, v := range values {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%.1f", v/(1<<20))
	}
	return b.String()
}

func patchesOK(addr string) int {
	return requests(addr)["PATCH 200"]
}

// requests is the manager's count of API requests by method and code, read
// from its metrics endpoint; empty while it cannot be read.
func requests(addr string) map[string]int {
	counts := map[string]int{}
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return counts
	}
	req.Header.Set("Accept-Encoding", "identity") // no gzip: it is most of what a scrape costs
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return counts
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return counts
	}
	for _, m := range families["rest_client_requests_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		counts[labels["method"]+" "+labels["code"]] += int(m.GetCounter().GetValue())
	}
	return counts
}

// unwritten lists every CircuitBreaker once and counts those whose status
// the manager has not written (for their generation) yet.
func unwritten(ctx context.Context, c client.Client, n int) (int, error) {
	var list cbv1.CircuitBreakerList
	if err := c.List(ctx, &list); err != nil {
		return 0, err
	}
	if len(list.Items) != n {
		return 0, fmt.Errorf("listed %d CircuitBreakers, created %d", len(list.Items), n)
	}
	missing := 0
	for i := range list.Items {
		cb := &list.Items[i]
		if cb.Status.ObservedGeneration != cb.Generation || cb.Status.State == "" {
			missing++
		}
	}
	return missing, nil
}

// profileAPIServer takes a CPU profile of the API server over the next 15
// seconds into $BENCH_SCALE_PROFILES/<phase>.pprof when that is set (to see
// where the API server's time goes in each phase); the function it returns
// waits for it.
func profileAPIServer(cfg *rest.Config, phase string) func() {
	dir := os.Getenv("BENCH_SCALE_PROFILES")
	if dir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		clientset, err := kubernetes.NewForConfig(cfg)
		if err == nil {
			var profile []byte
			profile, err = clientset.Discovery().RESTClient().Get().AbsPath("/debug/pprof/profile").Param("seconds", "15").DoRaw(context.Background())
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, phase+".pprof"), profile, 0o644)
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-scale: profiling the API server:", err)
		}
	}()
	return func() { <-done }
}

func parallel(workers int, keys []types.NamespacedName, fn func(types.NamespacedName) error) error {
	var wg sync.WaitGroup
	var firstErr atomic.Value
	next := atomic.Int64{}
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(keys) || firstErr.Load() != nil {
					return
				}
				if err := fn(keys[i]); err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(10 * time.Millisecond) }

// rss is the process's resident set size, for printing.
func rss(pid int) string {
	b, err := procstat.RSS(pid)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// cpu is the process's user+system CPU time (0 if it cannot be read).
func cpu(pid int) time.Duration {
	d, _ := procstat.CPU(pid)
	return d
}
