package proxy

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

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
