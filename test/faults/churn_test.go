//go:build faults

package faults

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/test/harness"
)

const (
	// churnBreakers is how many breakers the churn case creates and deletes.
	churnBreakers = 1000
	// Margins over the baseline that the manager returns to after the
	// churn. Goroutines: the load's connections come and go. Series: new
	// label values of the client's own metrics (status codes, verbs) stay.
	// The live heap (as the last collection found it), not the RSS: the
	// replica's heap floor lets the heap grow to 32 MiB between collections
	// whatever it holds, and the scavenger returns freed pages gradually,
	// so the RSS says little of what stayed.
	goroutineMargin = 25
	seriesMargin    = 50
	liveMarginRatio = 1.5
)

// usage is what the churn case watches of the manager.
type usage struct {
	goroutines, series int
	liveHeap           float64 // bytes
	collections        int     // since the start
	rssKiB             int
}

func (u usage) String() string {
	return fmt.Sprintf("%d goroutines, %d series, live heap %.1f MiB, RSS %.1f MiB",
		u.goroutines, u.series, u.liveHeap/(1<<20), float64(u.rssKiB)/1024)
}

// metricsToken is a token of a ServiceAccount bound to metrics-reader, as
// the e2e makes one.
func (f *faults) metricsToken(g Gomega) string {
	f.c.Kubectl(g, "create", "serviceaccount", "prometheus", "-n", harness.OperatorNamespace)
	f.c.Kubectl(g, "create", "clusterrolebinding", "prometheus-metrics-reader",
		"--clusterrole=circuit-breaker-operator-metrics-reader", "--serviceaccount="+harness.OperatorNamespace+":prometheus")
	return strings.TrimSpace(f.c.Kubectl(g, "create", "token", "prometheus", "-n", harness.OperatorNamespace, "--duration=1h"))
}

var insecure = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the manager's self-signed certificate
}}

// sample scrapes the manager's metrics and reads its RSS; ok is false when
// the scrape failed.
func (f *faults) sample(token string) (u usage, ok bool) {
	req, err := http.NewRequest(http.MethodGet, "https://"+f.c.Metrics+"/metrics", nil)
	if err != nil {
		return u, false
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := insecure.Do(req)
	if err != nil {
		return u, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return u, false
	}
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for lines.Scan() {
		line := lines.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u.series++
		if value, found := strings.CutPrefix(line, "go_goroutines "); found {
			n, _ := strconv.ParseFloat(value, 64)
			u.goroutines = int(n)
		}
		if value, found := strings.CutPrefix(line, "go_gc_heap_live_bytes "); found {
			u.liveHeap, _ = strconv.ParseFloat(value, 64)
		}
		if value, found := strings.CutPrefix(line, "go_gc_duration_seconds_count "); found {
			n, _ := strconv.ParseFloat(value, 64)
			u.collections = int(n)
		}
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", f.c.Manager.Process.Pid))
	if err != nil {
		return u, false
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if value, found := strings.CutPrefix(line, "VmRSS:"); found {
			u.rssKiB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(value), " kB"))
		}
	}
	return u, lines.Err() == nil && u.goroutines > 0 && u.liveHeap > 0 && u.rssKiB > 0
}

// 5. 1,000 breakers created then deleted while a load runs on another: no
// error on it; goroutines, series and the live heap come back near their baseline.
func (f *faults) churn(t *testing.T, g Gomega) {
	f.manager(t)
	token := f.metricsToken(g)
	f.breaker(t, g, "churn-steady", f.up.URL, "failureThreshold: 5", f.c.ProxyAddr)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	atSteady, waitSteady := startLoad(ctx, route(f.c.ProxyAddr, "churn-steady"), loadRate/2, 8*time.Minute)
	waitCalls(g, atSteady, loadRate/2)
	var first, base usage
	g.Eventually(func() bool { var ok bool; first, ok = f.sample(token); return ok }).Should(BeTrue(), "the metrics are served")
	// The live heap is what the last collection found: the baseline is
	// one found under the steady load, not the start's. Under the heap
	// floor, at this load, a collection comes every half a minute or so,
	// and the runtime forces one every 2 minutes.
	g.Eventually(func() bool {
		var ok bool
		base, ok = f.sample(token)
		return ok && base.collections > first.collections
	}, 3*time.Minute, time.Second).Should(BeTrue(), "a collection under the steady load")

	// The peak, sampled twice a second until the churn is over.
	var mu sync.Mutex
	peak := base
	sampling, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for range 600 {
			select {
			case <-sampling.Done():
				return
			case <-tick.C:
			}
			if u, ok := f.sample(token); ok {
				mu.Lock()
				peak = usage{max(peak.goroutines, u.goroutines), max(peak.series, u.series), max(peak.liveHeap, u.liveHeap), 0, max(peak.rssKiB, u.rssKiB)}
				mu.Unlock()
			}
		}
	}()

	f.c.Kubectl(g, "create", "namespace", "churn")
	var manifest strings.Builder
	for i := range churnBreakers {
		fmt.Fprintf(&manifest, `---
apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: b-%d, namespace: churn}
spec: {upstream: {url: %q}}
`, i, f.up.URL)
	}
	started := time.Now()
	out, err := f.c.KubectlStdin(manifest.String(), "create", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred(), out)
	created := time.Since(started)
	last := "http://" + f.c.ProxyAddr + fmt.Sprintf("/churn/b-%d/x", churnBreakers-1)
	g.Eventually(func() int { return get(last).status }, 60*time.Second, 200*time.Millisecond).Should(Equal(200), "the last one is routed")
	g.Eventually(func() int {
		return strings.Count(f.c.KubectlQuiet("get", "cb", "-n", "churn", "-o", "jsonpath={.items[*].status.state}"), "Closed")
	},
		2*time.Minute, time.Second).Should(Equal(churnBreakers), "every status is written")
	routed := time.Since(started)
	out, err = f.c.KubectlErr("delete", "cb", "-n", "churn", "--all", "--wait=false")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Eventually(func() int { return get(last).status }, 60*time.Second, 200*time.Millisecond).Should(Equal(404), "the last one is gone")
	deleted := time.Since(started)
	stopSampling()
	sampler.Wait()
	var atDeletion usage
	g.Eventually(func() bool { var ok bool; atDeletion, ok = f.sample(token); return ok }).Should(BeTrue(), "the metrics are served")

	var after usage
	var settled time.Duration
	g.Eventually(func(g Gomega) {
		u, ok := f.sample(token)
		g.Expect(ok).To(BeTrue())
		after, settled = u, time.Since(started)-deleted
		g.Expect(u.goroutines).To(BeNumerically("<=", base.goroutines+goroutineMargin), "goroutines")
		g.Expect(u.series).To(BeNumerically("<=", base.series+seriesMargin), "series")
		g.Expect(u.collections).To(BeNumerically(">", atDeletion.collections), "a collection since the deletion")
		g.Expect(u.liveHeap).To(BeNumerically("<=", base.liveHeap*liveMarginRatio), "live heap")
	}, 3*time.Minute, time.Second).Should(Succeed(), "back near the baseline")
	cancel()
	res := waitSteady()
	t.Logf("fault: churn of %d breakers: created in %s, all routed and their statuses written after %s, deleted and unrouted after %s",
		churnBreakers, created.Round(100*time.Millisecond), routed.Round(100*time.Millisecond), deleted.Round(100*time.Millisecond))
	t.Logf("fault: churn: baseline %s; peak %s; after %s (%s after the deletion); margins +%d goroutines, +%d series, live heap ×%.1f",
		base, peak, after, settled.Round(100*time.Millisecond), goroutineMargin, seriesMargin, liveMarginRatio)
	t.Logf("fault: churn: untouched breaker: %s", res)
	g.Expect(res.statuses).To(Equal(map[int]int{200: res.calls()}), "no error on the untouched breaker: %q", res.errs)
}

// 6. A webhook receiver that accepts and never answers: the proxy's
// latency does not move while breakers flap.
func (f *faults) hangingWebhook(t *testing.T, g Gomega) {
	healthy := harness.NewHookReceiver(t)
	var hung atomic.Int64
	release := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		hung.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); hanging.Close() })
	flapping := harness.NewUpstream(t)

	run := func(webhook string) (p50, p99 time.Duration, statuses map[int]int, flaps int) {
		holder := func() string {
			return f.c.KubectlQuiet("get", "lease", "-n", harness.OperatorNamespace, "circuit-breaker-operator.circuitbreaker.io",
				"-o", "jsonpath={.spec.holderIdentity}")
		}
		before := holder()
		if f.c.Manager != nil {
			f.c.StopManager(g)
		}
		f.c.Webhook = webhook
		f.c.StartManager(t)
		// The Lease names the elector's identity (not POD_NAME), a new one
		// per process: the only manager running leads once it holds one.
		g.Eventually(holder, 30*time.Second, 200*time.Millisecond).ShouldNot(Or(BeEmpty(), Equal(before)), "the manager leads, so it notifies")
		f.breaker(t, g, "latency", f.up.URL, "failureThreshold: 5", f.c.ProxyAddr)
		f.breaker(t, g, "flapper", flapping.URL, "failureThreshold: 1, recoveryTimeout: 1s", f.c.ProxyAddr)

		// The flapper: a failure opens it, a success after its recovery
		// timeout closes it; bounded, until the measurement is over.
		ctx, stop := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		var transitions atomic.Int64
		wg.Add(1)
		go func() {
			defer wg.Done()
			flapping.Failing.Store(true)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for range 1000 {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				a := get(route(f.c.ProxyAddr, "flapper"))
				switch {
				case a.header.Get("X-Circuit-Breaker-State") == "open" && flapping.Failing.Load():
					flapping.Failing.Store(false)
					transitions.Add(1)
				case a.status == 200 && !flapping.Failing.Load():
					flapping.Failing.Store(true)
					transitions.Add(1)
				}
			}
		}()
		// The measurement: sequential calls on one keep-alive connection.
		statuses = map[int]int{}
		var took []time.Duration
		c := &http.Client{Timeout: 5 * time.Second}
		defer c.CloseIdleConnections()
		deadline := time.Now().Add(8 * time.Second)
		for range 20000 {
			if time.Now().After(deadline) {
				break
			}
			start := time.Now()
			resp, err := c.Get(route(f.c.ProxyAddr, "latency"))
			if err != nil {
				statuses[0]++
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			took = append(took, time.Since(start))
			statuses[resp.StatusCode]++
		}
		stop()
		wg.Wait()
		return percentile(took, 50), percentile(took, 99), statuses, int(transitions.Load())
	}

	hp50, hp99, hStatuses, hFlaps := run(healthy.URL)
	g.Eventually(func() int { return len(healthy.Received()) }).Should(BeNumerically(">", 0), "the flapping was notified")
	notified := len(healthy.Received())
	sp50, sp99, sStatuses, sFlaps := run(hanging.URL)
	g.Eventually(hung.Load).Should(BeNumerically(">", 0), "the hanging receiver was called")
	t.Logf("fault: hanging webhook: healthy receiver: p50 %s, p99 %s, %v by status, %d flaps, %d notifications received",
		hp50.Round(10*time.Microsecond), hp99.Round(10*time.Microsecond), hStatuses, hFlaps, notified)
	t.Logf("fault: hanging webhook: hanging receiver: p50 %s, p99 %s, %v by status, %d flaps, %d notifications hanging",
		sp50.Round(10*time.Microsecond), sp99.Round(10*time.Microsecond), sStatuses, sFlaps, hung.Load())
	total := 0
	for _, n := range sStatuses {
		total += n
	}
	g.Expect(sStatuses).To(Equal(map[int]int{200: total}), "every call succeeds with the receiver hanging")
	g.Expect(hFlaps).To(BeNumerically(">", 2))
	g.Expect(sFlaps).To(BeNumerically(">", 2))
	g.Expect(sp99).To(BeNumerically("<=", 3*hp99+5*time.Millisecond), "p99 within 3× + 5 ms of the healthy run's")
	f.c.StopManager(g)
	f.c.Webhook = ""
}
