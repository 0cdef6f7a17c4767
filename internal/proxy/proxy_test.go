package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
)

// upstream is an httptest server that fails on command.
type upstream struct {
	*httptest.Server
	mode    atomic.Value // "ok", "500", "404", "429", "hang", "slow", "block"
	hits    atomic.Int32
	release chan struct{} // closes "block" requests
	mu      sync.Mutex
	last    *http.Request
	body    string
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{release: make(chan struct{})}
	u.mode.Store("ok")
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.last, u.body = r.Clone(context.Background()), string(body)
		u.mu.Unlock()
		w.Header().Set("X-Upstream", "yes")
		switch u.mode.Load().(string) {
		case "500":
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, "upstream broke")
		case "404":
			w.WriteHeader(http.StatusNotFound)
		case "429":
			w.WriteHeader(http.StatusTooManyRequests)
		case "hang":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		case "slow":
			time.Sleep(100 * time.Millisecond)
			_, _ = io.WriteString(w, "slow but fine")
		case "block":
			select {
			case <-u.release:
			case <-r.Context().Done():
			}
			_, _ = io.WriteString(w, "released")
		default:
			_, _ = io.WriteString(w, "hello from "+r.URL.Path)
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) lastRequest() (*http.Request, string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last, u.body
}

type fixture struct {
	proxy   *httptest.Server
	table   *Table
	metrics *metrics.Breakers
	reg     *prometheus.Registry
	clock   *clocktesting.FakeClock
}

func newFixture(t *testing.T) *fixture {
	reg := prometheus.NewRegistry()
	m := metrics.NewBreakers(reg)
	f := &fixture{table: NewTable(m), metrics: m, reg: reg, clock: clocktesting.NewFakeClock(time.Now())}
	f.proxy = httptest.NewServer(New(f.table, f.clock, Options{LoopToken: "test"}))
	t.Cleanup(f.proxy.Close)
	return f
}

// routeOption changes a test route's configuration.
type routeOption func(*RouteConfig)

func withCodes(patterns ...string) routeOption {
	return func(c *RouteConfig) {
		codes, err := ParseStatusCodes(patterns)
		if err != nil {
			panic(err)
		}
		c.FailureCodes = codes
	}
}

func withTimeout(d time.Duration) routeOption { return func(c *RouteConfig) { c.Timeout = d } }

func withStreamIdle(d time.Duration) routeOption {
	return func(c *RouteConfig) { c.StreamIdleTimeout = d }
}

func withMaxConcurrent(n int64) routeOption { return func(c *RouteConfig) { c.MaxConcurrent = n } }

func withFallback(status int, contentType, body string) routeOption {
	return func(c *RouteConfig) {
		c.Fallback = &Fallback{StatusCode: status, ContentType: contentType, Body: []byte(body)}
	}
}

// testRoute is a route to target with the resource's defaults (10s, 5m,
// 1024 calls, 5xx), changed by opts.
func testRoute(t *testing.T, target string, opts ...routeOption) RouteConfig {
	u, err := url.Parse(target)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	cfg := RouteConfig{Target: u, Timeout: 10 * time.Second, StreamIdleTimeout: 5 * time.Minute, MaxConcurrent: 1024}
	withCodes("5xx")(&cfg)
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// add routes shop/<name> to target through a new breaker.
func (f *fixture) add(t *testing.T, name, target string, settings breaker.Settings, opts ...routeOption) *breaker.Breaker {
	key := breaker.NewKey("shop", name)
	b := breaker.New(settings, f.clock, breaker.Options{
		OnTransition: func(tr breaker.Transition) { f.metrics.RecordTransition(key, tr) },
	})
	f.table.Set(key, b, testRoute(t, target, opts...))
	return b
}

func (f *fixture) get(t *testing.T, path string) (*http.Response, string) {
	resp, err := http.Get(f.proxy.URL + path)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func jsonError(g Gomega, body string) string {
	var e struct {
		Error string `json:"error"`
	}
	g.Expect(json.Unmarshal([]byte(body), &e)).To(Succeed(), body)
	return e.Error
}

func optional(o routeOption) []routeOption {
	if o == nil {
		return nil
	}
	return []routeOption{o}
}

func TestForwardsRequestsIntact(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	f := newFixture(t)
	f.add(t, "order-api", up.URL+"/v1/", breaker.Settings{})

	req, _ := http.NewRequest(http.MethodPut, f.proxy.URL+"/shop/order-api/orders/42%2F7?x=1&y=two", strings.NewReader(`{"qty":3}`))
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(resp.Header.Get("X-Upstream")).To(Equal("yes"))
	g.Expect(string(body)).To(Equal("hello from /v1/orders/42/7"))
	got, gotBody := up.lastRequest()
	g.Expect(got.Method).To(Equal(http.MethodPut))
	g.Expect(got.URL.EscapedPath()).To(Equal("/v1/orders/42%2F7"))
	g.Expect(got.URL.RawQuery).To(Equal("x=1&y=two"))
	g.Expect(gotBody).To(Equal(`{"qty":3}`))
	g.Expect(got.Header.Get("X-Custom")).To(Equal("kept"))
	g.Expect(got.Header.Get("Content-Type")).To(Equal("application/json"))
	g.Expect(got.Header.Get("X-Forwarded-For")).To(Equal("127.0.0.1"))
	g.Expect(got.Header.Get("X-Forwarded-Host")).To(Equal(strings.TrimPrefix(f.proxy.URL, "http://")))
	g.Expect(got.Header.Get("X-Forwarded-Proto")).To(Equal("http"))
	g.Expect(got.Host).To(Equal(strings.TrimPrefix(up.URL, "http://")))

	_, body2 := f.get(t, "/shop/order-api")
	g.Expect(body2).To(Equal("hello from /v1"), "no path after the breaker name goes to the target path")
}

func TestUnknownAndMalformedPaths(t *testing.T) {
	f := newFixture(t)
	f.table.Refuse(breaker.NewKey("shop", "ext"), http.StatusForbidden, "spec.upstream.url is refused: the manager runs without --allow-url-upstreams")
	tests := []struct {
		path   string
		status int
		err    string
	}{
		{"/shop/missing/x", http.StatusNotFound, "circuit breaker 'shop/missing' not found"},
		{"/shop", http.StatusNotFound, "no circuit breaker here: use /<namespace>/<name>/<path>"},
		{"/", http.StatusNotFound, "no circuit breaker here"},
		{"//x", http.StatusNotFound, "no circuit breaker here"},
		{"/shop/ext/pay", http.StatusForbidden, "circuit breaker 'shop/ext' may not forward: spec.upstream.url is refused"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			g := NewWithT(t)
			resp, body := f.get(t, tt.path)
			g.Expect(resp.StatusCode).To(Equal(tt.status))
			g.Expect(resp.Header.Get("Content-Type")).To(Equal("application/json"))
			g.Expect(jsonError(g, body)).To(ContainSubstring(tt.err))
		})
	}
}

func TestSplitPath(t *testing.T) {
	tests := []struct {
		path, key, rest string
		ok              bool
	}{
		{"/shop/order-api/a/b", "shop/order-api", "/a/b", true},
		{"/shop/order-api", "shop/order-api", "", true},
		{"/shop/order-api/", "shop/order-api", "/", true},
		{"/shop/", "", "", false},
		{"/shop//x", "", "", false},
		{"shop/a/b", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			g := NewWithT(t)
			key, rest, ok := splitPath(tt.path)
			g.Expect(ok).To(Equal(tt.ok))
			g.Expect(string(key)).To(Equal(tt.key))
			g.Expect(rest).To(Equal(tt.rest))
		})
	}
}

func TestClassification(t *testing.T) {
	closedPort := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "http://" + addr
	}()
	tests := []struct {
		name        string
		mode        string
		target      string // default: the upstream
		route       routeOption
		status      int
		body        string
		failures    uint32
		lastFailure breaker.Failure
		outcome     string
	}{
		{name: "2xx is a success", mode: "ok", status: 200, body: "hello from /x", outcome: "success"},
		{name: "404 is a success by default", mode: "404", status: 404, outcome: "success"},
		{name: "500 is a failure, and the upstream's answer still goes back", mode: "500", status: 500,
			body: "upstream broke", failures: 1, lastFailure: breaker.Failure{StatusCode: 500}, outcome: "failure"},
		{name: "429 is a failure when listed", mode: "429", route: withCodes("429", "5xx"),
			status: 429, failures: 1, lastFailure: breaker.Failure{StatusCode: 429}, outcome: "failure"},
		{name: "500 is a success when not listed", mode: "500", route: withCodes("503"),
			status: 500, body: "upstream broke", outcome: "success"},
		{name: "a hang past requestTimeout is a failure", mode: "hang", route: withTimeout(150 * time.Millisecond),
			status: 504, failures: 1, lastFailure: breaker.Failure{Kind: "timeout"}, outcome: "failure"},
		{name: "a slow answer within requestTimeout is a success", mode: "slow", route: withTimeout(2 * time.Second),
			status: 200, body: "slow but fine", outcome: "success"},
		{name: "a refused connection is a failure", target: closedPort, status: 502,
			failures: 1, lastFailure: breaker.Failure{Kind: "connection refused"}, outcome: "failure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			up := newUpstream(t)
			up.mode.Store(tt.mode)
			f := newFixture(t)
			target := up.URL
			if tt.target != "" {
				target = tt.target
			}
			b := f.add(t, "a", target, breaker.Settings{FailureThreshold: 10}, optional(tt.route)...)
			resp, body := f.get(t, "/shop/a/x")
			g.Expect(resp.StatusCode).To(Equal(tt.status))
			if tt.body != "" {
				g.Expect(body).To(Equal(tt.body))
			}
			s := b.Snapshot()
			g.Expect(s.Failures).To(Equal(tt.failures))
			g.Expect(s.LastFailureCause).To(Equal(tt.lastFailure))
			g.Expect(scrape(g, f.reg)).To(ContainSubstring(`circuitbreaker_requests_total{name="a",namespace="shop",outcome="` + tt.outcome + `"} 1`))
		})
	}
}

func TestCallerThatGoesAwayIsNoVerdict(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	up.mode.Store("block")
	f := newFixture(t)
	b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1, HalfOpenMaxRequests: 1})
	// Open, then half-open: the one probe slot is what a vanished caller must give back.
	tk, _ := b.Allow()
	tk.Failure(breaker.Failure{StatusCode: 500})
	f.clock.Step(breaker.DefaultRecoveryTimeout)

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.proxy.URL+"/shop/a/x", nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}()
	g.Eventually(up.hits.Load).Should(Equal(int32(1)))
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateHalfOpen))
	cancel()
	<-done

	g.Eventually(func() error {
		probe, err := b.Allow()
		if err == nil {
			probe.Cancel()
		}
		return err
	}).Should(Succeed(), "the probe slot is free again")
	s := b.Snapshot()
	g.Expect(s.State).To(Equal(breaker.StateHalfOpen), "neither success nor failure")
	g.Expect(s.LastFailureCause).To(Equal(breaker.Failure{StatusCode: 500}))
	close(up.release)
}

func TestRejection(t *testing.T) {
	tests := []struct {
		name        string
		route       routeOption
		status      int
		contentType string
		body        string
	}{
		{name: "without a fallback: 503 JSON", status: 503, contentType: "application/json"},
		{name: "the spec's fallback", status: 200, contentType: "application/json", body: `{"items":[],"degraded":true}`,
			route: withFallback(200, "application/json", `{"items":[],"degraded":true}`)},
		{name: "a fallback with a plain body", status: 503, contentType: "text/plain", body: "try later",
			route: withFallback(503, "text/plain", "try later")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			up := newUpstream(t)
			up.mode.Store("500")
			f := newFixture(t)
			b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 2, RecoveryTimeout: 30 * time.Second}, optional(tt.route)...)
			f.get(t, "/shop/a/x")
			f.get(t, "/shop/a/x")
			g.Expect(b.Snapshot().State).To(Equal(breaker.StateOpen))
			g.Expect(up.hits.Load()).To(Equal(int32(2)))

			// Opened at the fake clock's start with a 30s recovery timeout.
			for _, step := range []struct {
				advance    time.Duration
				retryAfter string
			}{{0, "30"}, {10*time.Second + 500*time.Millisecond, "20"}, {19 * time.Second, "1"}} {
				f.clock.Step(step.advance)
				resp, body := f.get(t, "/shop/a/x")
				g.Expect(resp.StatusCode).To(Equal(tt.status))
				g.Expect(resp.Header.Get("Content-Type")).To(Equal(tt.contentType))
				g.Expect(resp.Header.Get("X-Circuit-Breaker-State")).To(Equal("open"))
				if tt.body != "" {
					g.Expect(body).To(Equal(tt.body))
				} else {
					g.Expect(jsonError(g, body)).To(Equal("circuit breaker 'shop/a' is open: circuit breaker is open"))
				}
				g.Expect(resp.Header.Get("Retry-After")).To(Equal(step.retryAfter), "whole seconds until probing, rounded up")
			}
			g.Expect(up.hits.Load()).To(Equal(int32(2)), "an open breaker never contacts the upstream")
			g.Expect(scrape(g, f.reg)).To(ContainSubstring(`circuitbreaker_requests_total{name="a",namespace="shop",outcome="rejected"} 3`))
		})
	}
}

func TestRetryAfterIsAtLeastOneSecond(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	up.mode.Store("500")
	f := newFixture(t)
	f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1, RecoveryTimeout: 2 * time.Second})
	f.get(t, "/shop/a/x")
	f.clock.Step(2*time.Second - time.Millisecond)
	resp, _ := f.get(t, "/shop/a/x")
	g.Expect(resp.Header.Get("Retry-After")).To(Equal("1"))
}

func TestHalfOpenAdmitsExactlyTheProbeLimit(t *testing.T) {
	for _, limit := range []int{1, 3} {
		g := NewWithT(t)
		up := newUpstream(t)
		f := newFixture(t)
		b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1, HalfOpenMaxRequests: uint32(limit)})
		tk, _ := b.Allow()
		tk.Failure(breaker.Failure{StatusCode: 500})
		f.clock.Step(breaker.DefaultRecoveryTimeout)
		up.mode.Store("block")

		const callers = 40
		var wg sync.WaitGroup
		statuses := make(chan *http.Response, callers)
		for range callers {
			wg.Go(func() {
				resp, err := http.Get(f.proxy.URL + "/shop/a/x")
				if err == nil {
					resp.Body.Close()
					statuses <- resp
				}
			})
		}
		// Every caller but the probes is rejected while the probes wait upstream.
		rejected := 0
		for rejected < callers-limit {
			resp := <-statuses
			g.Expect(resp.StatusCode).To(Equal(503))
			g.Expect(resp.Header.Get("X-Circuit-Breaker-State")).To(Equal("half-open"))
			g.Expect(resp.Header.Get("Retry-After")).To(Equal("1"))
			rejected++
		}
		g.Eventually(up.hits.Load).Should(Equal(int32(limit)), "exactly halfOpenMaxRequests probes reach the upstream")
		g.Consistently(up.hits.Load, 200*time.Millisecond).Should(Equal(int32(limit)))
		close(up.release)
		wg.Wait()
		close(statuses)
		for resp := range statuses {
			g.Expect(resp.StatusCode).To(Equal(200))
		}
		g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed))
	}
}

func TestMetricsAfterAScriptedSequence(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	f := newFixture(t)
	b := f.add(t, "order-api", up.URL, breaker.Settings{FailureThreshold: 2, RecoveryTimeout: 5 * time.Second})

	f.get(t, "/shop/order-api/")  // success
	up.mode.Store("500")          //
	f.get(t, "/shop/order-api/")  // failure
	f.get(t, "/shop/order-api/")  // failure: opens
	f.get(t, "/shop/order-api/")  // rejected
	f.clock.Step(5 * time.Second) //
	up.mode.Store("ok")           //
	f.get(t, "/shop/order-api/")  // probe succeeds: half-open, then closed
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed))

	text := scrape(g, f.reg)
	for _, line := range []string{
		`circuitbreaker_requests_total{name="order-api",namespace="shop",outcome="success"} 2`,
		`circuitbreaker_requests_total{name="order-api",namespace="shop",outcome="failure"} 2`,
		`circuitbreaker_requests_total{name="order-api",namespace="shop",outcome="rejected"} 1`,
		`circuitbreaker_state{name="order-api",namespace="shop",state="Closed"} 1`,
		`circuitbreaker_state{name="order-api",namespace="shop",state="Open"} 0`,
		`circuitbreaker_state{name="order-api",namespace="shop",state="HalfOpen"} 0`,
		`circuitbreaker_transitions_total{from="Closed",name="order-api",namespace="shop",to="Open"} 1`,
		`circuitbreaker_transitions_total{from="Open",name="order-api",namespace="shop",to="HalfOpen"} 1`,
		`circuitbreaker_transitions_total{from="HalfOpen",name="order-api",namespace="shop",to="Closed"} 1`,
		`circuitbreaker_request_duration_seconds_count{name="order-api",namespace="shop"} 4`,
	} {
		g.Expect(text).To(ContainSubstring(line + "\n"))
	}

	f.table.Delete(breaker.NewKey("shop", "order-api"))
	g.Expect(scrape(g, f.reg)).NotTo(ContainSubstring(`name="order-api"`), "a deleted breaker leaves no series")
}

// scrape reads the registry the way Prometheus does, over HTTP.
func scrape(g Gomega, reg *prometheus.Registry) string {
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// A breaker has no metric series until it sees a call: at 10,000 breakers
// the idle ones cost none.
func TestSeriesAppearWithTraffic(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	f := newFixture(t)
	f.add(t, "quiet", up.URL, breaker.Settings{})
	f.add(t, "busy", up.URL, breaker.Settings{})
	f.get(t, "/shop/busy/x")
	families, err := f.reg.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	var names []string
	for _, fam := range families {
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "name" {
					names = append(names, l.GetValue())
				}
			}
		}
	}
	g.Expect(names).To(ContainElement("busy"))
	g.Expect(names).NotTo(ContainElement("quiet"))
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	for _, tc := range []struct {
		value string
		want  time.Duration
	}{
		{"", 0},
		{"120", 2 * time.Minute},
		{"0", 0},
		{"-5", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"99999999999", 24 * time.Hour},
	} {
		t.Run(tc.value, func(t *testing.T) {
			NewWithT(t).Expect(parseRetryAfter(tc.value, clock)).To(Equal(tc.want))
		})
	}
}
