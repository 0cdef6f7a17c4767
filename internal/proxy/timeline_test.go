package proxy

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// The proxy puts each call with a verdict on its breaker's timeline, and
// the breaker its rejections: the metrics' scripted sequence, per minute.
func TestTimelineAfterAScriptedSequence(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	f := newFixture(t)
	b := f.add(t, "order-api", up.URL, breaker.Settings{FailureThreshold: 2, RecoveryTimeout: 5 * time.Second})
	g.Expect(b.Timeline()).To(BeNil(), "no traffic, no timeline")

	f.get(t, "/shop/order-api/") // success
	up.mode.Store("500")
	f.get(t, "/shop/order-api/") // failure
	f.get(t, "/shop/order-api/") // failure: opens
	f.get(t, "/shop/order-api/") // rejected
	f.clock.Step(time.Minute)
	up.mode.Store("ok")
	f.get(t, "/shop/order-api/") // probe succeeds: half-open, then closed

	points := b.Timeline().Points(f.clock.Now())
	g.Expect(points).To(HaveLen(2))
	for i, want := range []struct {
		calls, failures, rejections uint32
		state                       breaker.State
	}{{3, 2, 1, breaker.StateOpen}, {1, 0, 0, breaker.StateOpen}} {
		p := points[i]
		g.Expect([]any{p.Calls, p.Failures, p.Rejections, p.State}).To(Equal([]any{want.calls, want.failures, want.rejections, want.state}), "minute %d", i)
		g.Expect(p.P99).To(BeNumerically(">", 0), "minute %d has a latency", i)
	}
}
