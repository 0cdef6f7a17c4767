package breaker

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	clocktesting "k8s.io/utils/clock/testing"
)

// No endpoint opens the circuit at once and holds it open past its
// recovery timeout; an endpoint back makes it probe at once.
func TestNoEndpointsHoldsTheCircuitOpen(t *testing.T) {
	g := NewWithT(t)
	clk := clocktesting.NewFakeClock(epoch)
	var fired []Transition
	b := New(Settings{RecoveryTimeout: 2 * time.Minute}, clk, Options{OnTransition: func(tr Transition) { fired = append(fired, tr) }})

	b.SetEndpointsUsable(true)
	g.Expect(b.Snapshot().State).To(Equal(StateClosed), "endpoints: nothing to do")

	b.SetEndpointsUsable(false)
	s := b.Snapshot()
	g.Expect(s.State).To(Equal(StateOpen))
	g.Expect(s.LastOpenReason).To(Equal(OpenNoReadyEndpoints))
	g.Expect(s.OpenUntil).To(Equal(epoch.Add(2*time.Minute)), "callers are told to come back after the recovery timeout")
	g.Expect(fired).To(HaveLen(1))
	g.Expect(fired[0].OpenReason).To(Equal(OpenNoReadyEndpoints))

	clk.Step(time.Hour)
	_, err := b.Allow()
	g.Expect(err).To(MatchError(ErrOpen), "no probe while there is nothing to call")

	g.Expect(b.Reset("r1", "reset by hand")).To(BeTrue())
	b.SetEndpointsUsable(false)
	g.Expect(b.Snapshot().State).To(Equal(StateOpen), "still none: open again")

	b.SetEndpointsUsable(true)
	g.Expect(b.Snapshot().State).To(Equal(StateHalfOpen), "an endpoint is back: probe at once")
	tk, err := b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
	tk.Success()
	g.Expect(b.Snapshot().State).To(Equal(StateClosed))

	// Open for another reason: an endpoint coming back changes nothing.
	fail(g, b, 5)
	g.Expect(b.Snapshot().LastOpenReason).To(Equal(OpenConsecutiveFailures))
	b.SetEndpointsUsable(true)
	g.Expect(b.Snapshot().State).To(Equal(StateOpen))
}

func TestNoEndpointsLeavesForcedAndDisabledModesAlone(t *testing.T) {
	for _, mode := range []Mode{ModeForcedOpen, ModeDisabled} {
		g := NewWithT(t)
		b := New(Settings{Mode: mode}, clocktesting.NewFakeClock(epoch), Options{})
		before := b.Snapshot()
		b.SetEndpointsUsable(false)
		g.Expect(b.Snapshot().State).To(Equal(before.State), mode.String())
		g.Expect(b.Snapshot().LastOpenReason).To(Equal(before.LastOpenReason), mode.String())
	}
}
