package controller_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/controller"
)

// failingUpstream answers 200, or 500 while failing is set.
func failingUpstream(t *testing.T) (*httptest.Server, *atomic.Bool) {
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	return srv, &failing
}

// proxyFor serves the harness's routes like the manager's proxy does.
func proxyFor(t *testing.T, h *harness) *httptest.Server {
	srv := httptest.NewServer(h.Proxy.Handler)
	t.Cleanup(srv.Close)
	return srv
}

func call(g Gomega, url string) int {
	resp, err := http.Get(url)
	g.Expect(err).NotTo(HaveOccurred())
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func urlBreaker(namespace, name, target string, threshold int32, recovery time.Duration, mutate ...func(*cbv1.CircuitBreaker)) *cbv1.CircuitBreaker {
	return newCircuitBreaker(namespace, name, append([]func(*cbv1.CircuitBreaker){func(cb *cbv1.CircuitBreaker) {
		cb.Spec.Upstream = cbv1.Upstream{URL: target}
		cb.Spec.FailureThreshold = threshold
		cb.Spec.RecoveryTimeout = &metav1.Duration{Duration: recovery}
	}}, mutate...)...)
}

func TestTrafficThroughTheProxyDrivesTheStatus(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{AllowURLUpstreams: true})
	upstream, failing := failingUpstream(t)
	px := proxyFor(t, h)
	ctx := context.Background()
	g.Expect(k8sClient.Create(ctx, urlBreaker(ns, "order-api", upstream.URL, 3, 2*time.Second))).To(Succeed())
	route := px.URL + "/" + ns + "/order-api/orders"
	g.Eventually(func() int { return call(g, route) }).Should(Equal(200))

	state := func(g Gomega) string { return getBreaker(g, ns, "order-api").Status.State }
	failing.Store(true)
	for range 3 {
		g.Expect(call(g, route)).To(Equal(500))
	}
	g.Eventually(state).Should(Equal(cbv1.StateOpen))
	g.Expect(call(g, route)).To(Equal(503), "rejected while open")

	failing.Store(false)
	g.Eventually(state).Should(Equal(cbv1.StateHalfOpen))
	g.Expect(call(g, route)).To(Equal(200), "the probe goes through")
	g.Eventually(state).Should(Equal(cbv1.StateClosed))
	g.Eventually(func() []string { return events(g, ns, "order-api") }).Should(ContainElements(
		"Opened: 3 consecutive failures, last: 500",
		"HalfOpened: recovery timeout of 2s elapsed",
		"Closed: 1 successful probe in a row",
	))

	// Traffic opens it again; the reset annotation closes it.
	failing.Store(true)
	for range 3 {
		call(g, route)
	}
	g.Eventually(state).Should(Equal(cbv1.StateOpen))
	annotateReset(g, ns, "order-api", "1")
	g.Eventually(state).Should(Equal(cbv1.StateClosed))
	failing.Store(false)
	g.Expect(call(g, route)).To(Equal(200))

	// Deleting the resource removes the route.
	g.Expect(k8sClient.Delete(ctx, getBreaker(g, ns, "order-api"))).To(Succeed())
	g.Eventually(func() int { return call(g, route) }).Should(Equal(404))
}

func TestRefusedURLUpstreamAnswers403(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{})
	px := proxyFor(t, h)
	g.Expect(k8sClient.Create(context.Background(), urlBreaker(ns, "ext", "https://api.example.com", 3, time.Second))).To(Succeed())
	g.Eventually(func() int { return call(g, px.URL+"/"+ns+"/ext/x") }).Should(Equal(403))
}

// A storm of calls against a flapping upstream must not turn into a storm
// of API writes: transitions and coalesced counts bound them.
func TestStatusWritesStayBoundedUnderAStorm(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{AllowURLUpstreams: true})
	upstream, failing := failingUpstream(t)
	px := proxyFor(t, h)
	g.Expect(k8sClient.Create(context.Background(), urlBreaker(ns, "flappy", upstream.URL, 5, time.Second))).To(Succeed())
	route := px.URL + "/" + ns + "/flappy/"
	g.Eventually(func() int { return call(g, route) }).Should(Equal(200))
	g.Eventually(func(g Gomega) {
		g.Expect(getBreaker(g, ns, "flappy").Status.State).To(Equal(cbv1.StateClosed))
	}).Should(Succeed())

	const storm = 4 * time.Second
	before := h.statusPatches.Load()
	requests := stormThrough(failing, storm, route)
	writes := h.statusPatches.Load() - before
	transitions := countPrefix(events(g, ns, "flappy"), "Opened:") + countPrefix(events(g, ns, "flappy"), "Closed:")
	t.Logf("%d requests in %s, %d status writes, about %d open/close transitions", requests, storm, writes, transitions)
	g.Expect(requests).To(BeNumerically(">", 1000), "a storm")
	// Each second holds at most one count flush and one Open→HalfOpen→Closed|Open
	// cycle (recoveryTimeout is 1s), plus a little for the edges.
	g.Expect(writes).To(BeNumerically("<=", 4*int64(storm/time.Second)+4))
	g.Expect(writes).To(BeNumerically(">=", 2), "the storm's transitions did reach the status")
}

// stormThrough sends calls from 8 callers, spread over routes, for d,
// while the upstream flips between failing and not every 100ms, and
// returns how many were answered.
func stormThrough(failing *atomic.Bool, d time.Duration, routes ...string) int64 {
	stop := time.Now().Add(d)
	var requests atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for time.Now().Before(stop) {
			failing.Store(!failing.Load())
			time.Sleep(100 * time.Millisecond)
		}
	})
	transport := &http.Transport{MaxIdleConnsPerHost: 16}
	for i := range 8 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				resp, err := transport.RoundTrip(mustRequest(routes[i%len(routes)]))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					requests.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return requests.Load()
}

func mustRequest(url string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		panic(err)
	}
	return req
}
