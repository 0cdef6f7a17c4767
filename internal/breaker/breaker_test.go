package breaker

import (
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	clocktesting "k8s.io/utils/clock/testing"
)

var epoch = time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)

var http503 = Failure{StatusCode: 503}

// recorder collects transitions delivered by a breaker.
type recorder struct {
	mu          sync.Mutex
	transitions []Transition
	changes     int
}

func (r *recorder) options() Options {
	return Options{
		OnTransition: func(t Transition) { r.mu.Lock(); r.transitions = append(r.transitions, t); r.mu.Unlock() },
		OnChange:     func() { r.mu.Lock(); r.changes++; r.mu.Unlock() },
	}
}

func (r *recorder) states() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, t := range r.transitions {
		out = append(out, t.From.String()+"->"+t.To.String())
	}
	return out
}

func newTestBreaker(s Settings) (*Breaker, *clocktesting.FakeClock, *recorder) {
	clk := clocktesting.NewFakeClock(epoch)
	rec := &recorder{}
	return New(s, clk, rec.options()), clk, rec
}

func fail(g Gomega, b *Breaker, n int) {
	for range n {
		t, err := b.Allow()
		g.Expect(err).NotTo(HaveOccurred())
		t.Failure(http503)
	}
}

func succeed(g Gomega, b *Breaker, n int) {
	for range n {
		t, err := b.Allow()
		g.Expect(err).NotTo(HaveOccurred())
		t.Success()
	}
}

// openAndWait opens b with failures and advances the clock past the recovery timeout.
func openAndWait(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
	fail(g, b, int(b.settings.FailureThreshold))
	g.Expect(b.Snapshot().State).To(Equal(StateOpen))
	clk.Step(b.settings.RecoveryTimeout)
}

func TestSettingsDefaults(t *testing.T) {
	g := NewWithT(t)
	b, _, _ := newTestBreaker(Settings{})
	g.Expect(b.Snapshot().Settings).To(Equal(Settings{
		FailureThreshold: 5, RecoveryTimeout: 30 * time.Second, HalfOpenMaxRequests: 1, SuccessThreshold: 1,
	}))
}

func TestStateString(t *testing.T) {
	for state, want := range map[State]string{StateClosed: "Closed", StateOpen: "Open", StateHalfOpen: "HalfOpen", State(9): "State(9)"} {
		t.Run(want, func(t *testing.T) { NewWithT(t).Expect(state.String()).To(Equal(want)) })
	}
}

func TestResetFromEveryState(t *testing.T) {
	tests := []struct {
		name  string
		setup func(g Gomega, b *Breaker, clk *clocktesting.FakeClock)
		from  State
		seq   uint64 // of the reset's transition
	}{
		{"closed with failures", func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) { fail(g, b, 2) }, StateClosed, 1},
		{"open", func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) { fail(g, b, 3) }, StateOpen, 2},
		{"half-open", func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) { openAndWait(g, b, clk) }, StateHalfOpen, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			b, clk, rec := newTestBreaker(Settings{FailureThreshold: 3})
			tt.setup(g, b, clk)
			g.Expect(b.Snapshot().State).To(Equal(tt.from))
			// A call admitted before the reset reports late: it must be ignored.
			late, lateErr := b.Allow()

			g.Expect(b.Reset("r1", "operator asked")).To(BeTrue())

			s := b.Snapshot()
			g.Expect(s.State).To(Equal(StateClosed))
			g.Expect(s.Failures).To(BeZero())
			g.Expect(s.LastFailure.IsZero()).To(BeTrue())
			g.Expect(s.OpenUntil.IsZero()).To(BeTrue())
			last := rec.transitions[len(rec.transitions)-1]
			g.Expect(last).To(Equal(Transition{Seq: tt.seq, From: tt.from, To: StateClosed, At: clk.Now(), Reason: "operator asked", Reset: true}))

			if lateErr == nil {
				late.Failure(http503)
				late.Failure(http503)
				late.Failure(http503)
			}
			g.Expect(b.Snapshot().Failures).To(BeZero())
			fail(g, b, 2)
			g.Expect(b.Snapshot().State).To(Equal(StateClosed), "a fresh threshold after reset")

			// The same id again does nothing; a new one resets.
			transitions := len(rec.transitions)
			g.Expect(b.Reset("r1", "operator asked")).To(BeFalse())
			g.Expect(b.Snapshot().Failures).To(Equal(uint32(2)))
			g.Expect(rec.transitions).To(HaveLen(transitions))
			g.Expect(b.Reset("r2", "operator asked again")).To(BeTrue())
			g.Expect(b.Snapshot().Failures).To(BeZero())
			g.Expect(b.Snapshot().LastResetID).To(Equal("r2"))
		})
	}
}

func TestUpdateKeepsStateAndCounts(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(g Gomega, b *Breaker, clk *clocktesting.FakeClock)
		update   Settings
		state    State
		failures uint32
		check    func(g Gomega, b *Breaker, clk *clocktesting.FakeClock)
	}{
		{
			name:   "closed keeps its failures under a higher threshold",
			setup:  func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) { fail(g, b, 2) },
			update: Settings{FailureThreshold: 10},
			state:  StateClosed, failures: 2,
		},
		{
			name:   "closed opens when its failures reach a lowered threshold",
			setup:  func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) { fail(g, b, 2) },
			update: Settings{FailureThreshold: 2},
			state:  StateOpen, failures: 2,
		},
		{
			name:   "open stays open and follows a new recovery timeout",
			setup:  func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) { fail(g, b, 3) },
			update: Settings{FailureThreshold: 3, RecoveryTimeout: time.Minute},
			state:  StateOpen, failures: 3,
			check: func(g Gomega, b *Breaker, _ *clocktesting.FakeClock) {
				g.Expect(b.Snapshot().OpenUntil).To(Equal(epoch.Add(time.Minute)))
			},
		},
		{
			name: "half-open closes when its successes reach a lowered success threshold",
			setup: func(g Gomega, b *Breaker, clk *clocktesting.FakeClock) {
				openAndWait(g, b, clk)
				succeed(g, b, 1)
			},
			update: Settings{FailureThreshold: 3, SuccessThreshold: 1},
			state:  StateClosed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			b, clk, _ := newTestBreaker(Settings{FailureThreshold: 3, SuccessThreshold: 2, HalfOpenMaxRequests: 2})
			tt.setup(g, b, clk)
			b.Update(tt.update)
			s := b.Snapshot()
			g.Expect(s.State).To(Equal(tt.state))
			g.Expect(s.Failures).To(Equal(tt.failures))
			if tt.check != nil {
				tt.check(g, b, clk)
			}
		})
	}
}

func TestCountChangesAreReported(t *testing.T) {
	g := NewWithT(t)
	b, _, rec := newTestBreaker(Settings{FailureThreshold: 3})
	succeed(g, b, 5)
	g.Expect(rec.changes).To(BeZero(), "successes with no failures to clear change nothing")
	fail(g, b, 1)
	succeed(g, b, 1)
	g.Expect(rec.changes).To(Equal(2))
}

// countingClock counts reads of the time.
type countingClock struct {
	*clocktesting.FakeClock
	reads int
}

func (c *countingClock) Now() time.Time { c.reads++; return c.FakeClock.Now() }

func TestClosedHotPathReadsNoClock(t *testing.T) {
	g := NewWithT(t)
	clk := &countingClock{FakeClock: clocktesting.NewFakeClock(epoch)}
	b := New(Settings{FailureThreshold: 3}, clk, Options{})
	clk.reads = 0
	for range 100 {
		tk, err := b.Allow()
		g.Expect(err).NotTo(HaveOccurred())
		tk.Success()
	}
	g.Expect(clk.reads).To(BeZero(), "permission and a success while closed read no clock")
	tk, _ := b.Allow()
	tk.Failure(http503)
	g.Expect(clk.reads).To(Equal(1), "a failure reads it once, for lastFailureTime")
}

func TestAllowedAndRejectedCounts(t *testing.T) {
	g := NewWithT(t)
	b, clk, _ := newTestBreaker(Settings{FailureThreshold: 2, HalfOpenMaxRequests: 1})
	succeed(g, b, 3)
	fail(g, b, 2) // opens
	for range 4 {
		_, err := b.Allow()
		g.Expect(err).To(MatchError(ErrOpen))
	}
	clk.Step(DefaultRecoveryTimeout)
	probe, err := b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
	_, err = b.Allow()
	g.Expect(err).To(MatchError(ErrProbeLimit))
	probe.Success()
	s := b.Snapshot()
	g.Expect(s.Allowed).To(Equal(uint64(6)))
	g.Expect(s.Rejected).To(Equal(uint64(5)))
	g.Expect(b.OpenUntil().IsZero()).To(BeTrue(), "not open")
}

func TestWholeSecondsUntil(t *testing.T) {
	for _, tt := range []struct {
		left time.Duration
		want int64
	}{
		{30 * time.Second, 30},
		{19*time.Second + 500*time.Millisecond, 20},
		{time.Nanosecond, 1},
		{0, 0},
		{-time.Second, 0},
	} {
		t.Run(tt.left.String(), func(t *testing.T) {
			NewWithT(t).Expect(WholeSecondsUntil(epoch.Add(tt.left), epoch)).To(Equal(tt.want))
		})
	}
	NewWithT(t).Expect(WholeSecondsUntil(time.Time{}, epoch)).To(BeZero(), "no time set")
}
