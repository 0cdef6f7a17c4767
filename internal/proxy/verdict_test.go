package proxy

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

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
