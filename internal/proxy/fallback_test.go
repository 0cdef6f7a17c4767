package proxy

import (
	"net/http"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

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
		close(up.release)
		wg.Wait()
		close(statuses)
		answered := 0
		for resp := range statuses {
			g.Expect(resp.StatusCode).To(Equal(200))
			answered++
		}
		// Every caller has had its answer: none came in as a probe later.
		g.Expect(answered).To(Equal(limit))
		g.Expect(up.hits.Load()).To(Equal(int32(limit)))
		g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed))
	}
}
