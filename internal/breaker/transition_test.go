package breaker

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestTransitionsAreNumbered(t *testing.T) {
	g := NewWithT(t)
	clk := clocktesting.NewFakeClock(epoch)
	b := New(Settings{FailureThreshold: 1, RecoveryTimeout: time.Second}, clk, Options{})
	fail(g, b, 1)
	clk.Step(time.Second)
	probe, err := b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
	probe.Success()
	var seqs []uint64
	for _, tr := range b.Snapshot().History {
		seqs = append(seqs, tr.Seq)
	}
	g.Expect(seqs).To(Equal([]uint64{1, 2, 3}))

	// A restored history was handled before: its entries have no number, and
	// new transitions continue from where the restored breaker is.
	restored := New(Settings{FailureThreshold: 1}, clk, Options{})
	restored.restore(b.Snapshot())
	fail(g, restored, 1)
	seqs = nil
	for _, tr := range restored.Snapshot().History {
		seqs = append(seqs, tr.Seq)
	}
	g.Expect(seqs).To(Equal([]uint64{0, 0, 0, 1}))
}

func TestTransitions(t *testing.T) {
	tests := []struct {
		name        string
		settings    Settings
		run         func(g Gomega, b *Breaker, clk *clocktesting.FakeClock)
		state       State
		failures    uint32
		transitions []string
	}{
		{
			name:     "failures below the threshold keep it closed",
			settings: Settings{FailureThreshold: 3},
			run:      func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) { fail(g, b, 2) },
			state:    StateClosed, failures: 2,
		},
		{
			name:        "the threshold of consecutive failures opens it",
			settings:    Settings{FailureThreshold: 3},
			run:         func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) { fail(g, b, 3) },
			state:       StateOpen,
			failures:    3,
			transitions: []string{"Closed->Open"},
		},
		{
			name:     "a success clears the consecutive count",
			settings: Settings{FailureThreshold: 3},
			run: func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) {
				fail(g, b, 2)
				succeed(g, b, 1)
				fail(g, b, 2)
			},
			state: StateClosed, failures: 2,
		},
		{
			name:     "open stays open until the recovery timeout",
			settings: Settings{FailureThreshold: 1, RecoveryTimeout: 10 * time.Second},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				fail(g, b, 1)
				clk.Step(10*time.Second - time.Nanosecond)
				_, err := b.Allow()
				g.Expect(err).To(MatchError(ErrOpen))
			},
			state:       StateOpen,
			failures:    1,
			transitions: []string{"Closed->Open"},
		},
		{
			name:     "the recovery timeout admits a probe in half-open",
			settings: Settings{FailureThreshold: 1, RecoveryTimeout: 10 * time.Second},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				openAndWait(g, b, clk)
				_, err := b.Allow()
				g.Expect(err).NotTo(HaveOccurred())
			},
			state:       StateHalfOpen,
			failures:    1,
			transitions: []string{"Closed->Open", "Open->HalfOpen"},
		},
		{
			name:     "a snapshot after the recovery timeout shows half-open without traffic",
			settings: Settings{FailureThreshold: 1, RecoveryTimeout: 10 * time.Second},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				openAndWait(g, b, clk)
			},
			state:       StateHalfOpen,
			failures:    1,
			transitions: []string{"Closed->Open", "Open->HalfOpen"},
		},
		{
			name:     "a successful probe closes it",
			settings: Settings{FailureThreshold: 1},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				openAndWait(g, b, clk)
				succeed(g, b, 1)
			},
			state:       StateClosed,
			transitions: []string{"Closed->Open", "Open->HalfOpen", "HalfOpen->Closed"},
		},
		{
			name:     "a failed probe reopens it",
			settings: Settings{FailureThreshold: 1},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				openAndWait(g, b, clk)
				fail(g, b, 1)
				_, err := b.Allow()
				g.Expect(err).To(MatchError(ErrOpen))
			},
			state:       StateOpen,
			failures:    1,
			transitions: []string{"Closed->Open", "Open->HalfOpen", "HalfOpen->Open"},
		},
		{
			name:     "the success threshold needs that many successes in a row",
			settings: Settings{FailureThreshold: 1, SuccessThreshold: 3, HalfOpenMaxRequests: 1},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				openAndWait(g, b, clk)
				succeed(g, b, 2)
				g.Expect(b.Snapshot().State).To(Equal(StateHalfOpen))
				succeed(g, b, 1)
			},
			state:       StateClosed,
			transitions: []string{"Closed->Open", "Open->HalfOpen", "HalfOpen->Closed"},
		},
		{
			name:     "a failure after some successful probes reopens it",
			settings: Settings{FailureThreshold: 1, SuccessThreshold: 3},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				openAndWait(g, b, clk)
				succeed(g, b, 2)
				fail(g, b, 1)
			},
			state:       StateOpen,
			failures:    1,
			transitions: []string{"Closed->Open", "Open->HalfOpen", "HalfOpen->Open"},
		},
		{
			name:     "half-open admits only halfOpenMaxRequests probes at once",
			settings: Settings{FailureThreshold: 1, HalfOpenMaxRequests: 2, SuccessThreshold: 2},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				openAndWait(g, b, clk)
				first, err := b.Allow()
				g.Expect(err).NotTo(HaveOccurred())
				_, err = b.Allow()
				g.Expect(err).NotTo(HaveOccurred())
				_, err = b.Allow()
				g.Expect(err).To(MatchError(ErrProbeLimit))
				first.Success() // frees a slot
				_, err = b.Allow()
				g.Expect(err).NotTo(HaveOccurred())
			},
			state:       StateHalfOpen,
			failures:    1,
			transitions: []string{"Closed->Open", "Open->HalfOpen"},
		},
		{
			name:     "a cancelled probe gives its slot back without a verdict",
			settings: Settings{FailureThreshold: 1},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				openAndWait(g, b, clk)
				probe, err := b.Allow()
				g.Expect(err).NotTo(HaveOccurred())
				probe.Cancel()
				_, err = b.Allow()
				g.Expect(err).NotTo(HaveOccurred())
			},
			state:       StateHalfOpen,
			failures:    1,
			transitions: []string{"Closed->Open", "Open->HalfOpen"},
		},
		{
			name:     "a cancelled call in closed changes nothing",
			settings: Settings{FailureThreshold: 2},
			run: func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) {
				fail(g, b, 1)
				t, err := b.Allow()
				g.Expect(err).NotTo(HaveOccurred())
				t.Cancel()
			},
			state: StateClosed, failures: 1,
		},
		{
			name:     "outcomes from before a transition are ignored",
			settings: Settings{FailureThreshold: 2},
			run: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				late, err := b.Allow()
				g.Expect(err).NotTo(HaveOccurred())
				fail(g, b, 2) // opens
				clk.Step(b.settings.RecoveryTimeout)
				probe, err := b.Allow() // half-open
				g.Expect(err).NotTo(HaveOccurred())
				late.Success() // from the first Closed period: must not close it
				g.Expect(b.Snapshot().State).To(Equal(StateHalfOpen))
				probe.Success()
			},
			state:       StateClosed,
			transitions: []string{"Closed->Open", "Open->HalfOpen", "HalfOpen->Closed"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			b, clk, rec := newTestBreaker(tt.settings)
			tt.run(g, b, clk)
			s := b.Snapshot()
			g.Expect(s.State).To(Equal(tt.state))
			g.Expect(s.Failures).To(Equal(tt.failures))
			g.Expect(rec.states()).To(Equal(tt.transitions))
		})
	}
}

func TestTransitionDetails(t *testing.T) {
	g := NewWithT(t)
	b, clk, rec := newTestBreaker(Settings{FailureThreshold: 2, RecoveryTimeout: 5 * time.Second})
	fail(g, b, 1)
	clk.Step(time.Second)
	tk, _ := b.Allow()
	tk.Failure(Failure{Kind: "timeout"})

	s := b.Snapshot()
	g.Expect(s.State).To(Equal(StateOpen))
	g.Expect(s.LastFailure).To(Equal(epoch.Add(time.Second)))
	g.Expect(s.LastFailureCause).To(Equal(Failure{Kind: "timeout"}))
	g.Expect(s.LastTransitionTime).To(Equal(epoch.Add(time.Second)))
	g.Expect(s.OpenUntil).To(Equal(epoch.Add(6 * time.Second)))
	g.Expect(rec.transitions).To(HaveLen(1))
	g.Expect(rec.transitions[0]).To(Equal(Transition{
		Seq: 1, From: StateClosed, To: StateOpen, At: epoch.Add(time.Second), Reason: "2 consecutive failures, last: timeout",
		OpenReason: OpenConsecutiveFailures,
	}))

	clk.Step(5 * time.Second)
	probe, err := b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rec.transitions[1].Reason).To(Equal("recovery timeout of 5s elapsed"))
	probe.Failure(http503)
	g.Expect(rec.transitions[2].Reason).To(Equal("probe failed: 503"))
	g.Expect(rec.transitions[2].OpenReason).To(Equal(OpenProbeFailed))
	g.Expect(b.Snapshot().OpenUntil).To(Equal(epoch.Add(11 * time.Second)))
}

func TestHistoryKeepsTheLastTransitions(t *testing.T) {
	g := NewWithT(t)
	b, clk, _ := newTestBreaker(Settings{FailureThreshold: 1, RecoveryTimeout: time.Second})
	// Flap: each cycle is Closed→Open, Open→HalfOpen, HalfOpen→Closed.
	for range 7 {
		openAndWait(g, b, clk)
		succeed(g, b, 1)
	}
	b.Reset("r1", "operator asked")
	h := b.Snapshot().History
	g.Expect(h).To(HaveLen(HistoryLimit))
	last := h[len(h)-1]
	g.Expect(last.Reason).To(Equal("operator asked"))
	g.Expect(last.Reset).To(BeTrue())
	g.Expect(h[len(h)-2].From).To(Equal(StateHalfOpen))
	g.Expect(h[len(h)-2].To).To(Equal(StateClosed))
	for i := 1; i < len(h); i++ {
		g.Expect(h[i].At).NotTo(BeTemporally("<", h[i-1].At), "oldest first")
	}
	// The snapshot is a copy.
	h[0].Reason = "changed"
	g.Expect(b.Snapshot().History[0].Reason).NotTo(Equal("changed"))
}
