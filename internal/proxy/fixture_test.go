package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/utils/clock"
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

func newFixture(t *testing.T) *fixture { return newFixtureWith(t, Options{}) }

// newFixtureWith is newFixture with a proxy made with opts (its loop token "test").
func newFixtureWith(t *testing.T, opts Options) *fixture {
	reg := prometheus.NewRegistry()
	m := metrics.NewBreakers(reg)
	f := &fixture{table: NewTable(m), metrics: m, reg: reg, clock: clocktesting.NewFakeClock(time.Now())}
	opts.LoopToken = "test"
	f.proxy = httptest.NewServer(New(f.table, f.clock, opts))
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

// add routes shop/<name> to target through a new breaker on f's clock.
func (f *fixture) add(t *testing.T, name, target string, settings breaker.Settings, opts ...routeOption) *breaker.Breaker {
	return f.addOn(t, f.clock, name, target, settings, opts...)
}

// addOn is add with a breaker on clk: the slow-call rule needs a clock
// that moves while a call is in flight.
func (f *fixture) addOn(t *testing.T, clk clock.PassiveClock, name, target string, settings breaker.Settings, opts ...routeOption) *breaker.Breaker {
	key := breaker.NewKey("shop", name)
	b := breaker.New(settings, clk, breaker.Options{
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
