package breaker

import (
	"fmt"
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

func TestHalfOpenAdmissionUnderConcurrentCallers(t *testing.T) {
	for _, limit := range []uint32{1, 3, 10} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			g := NewWithT(t)
			b, clk, _ := newTestBreaker(Settings{FailureThreshold: 1, HalfOpenMaxRequests: limit, SuccessThreshold: 1000})
			openAndWait(g, b, clk)

			const callers = 64
			var (
				wg       sync.WaitGroup
				mu       sync.Mutex
				admitted []Ticket
				rejected int
			)
			start := make(chan struct{})
			for range callers {
				wg.Go(func() {
					<-start
					tk, err := b.Allow()
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						g.Expect(err).To(MatchError(ErrProbeLimit))
						rejected++
						return
					}
					admitted = append(admitted, tk)
				})
			}
			close(start)
			wg.Wait()
			g.Expect(admitted).To(HaveLen(int(limit)))
			g.Expect(rejected).To(Equal(callers - int(limit)))
		})
	}
}

func TestConcurrentTrafficIsConsistent(t *testing.T) {
	g := NewWithT(t)
	b, clk, rec := newTestBreaker(Settings{FailureThreshold: 50, RecoveryTimeout: time.Second, HalfOpenMaxRequests: 4})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				tk, err := b.Allow()
				if err != nil {
					continue
				}
				if (i+w)%3 == 0 {
					tk.Failure(http503)
				} else {
					tk.Success()
				}
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			clk.Step(500 * time.Millisecond)
			b.Snapshot()
		}
	})
	wg.Wait()
	// Every transition starts where the previous one ended.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	state := StateClosed
	for _, tr := range rec.transitions {
		g.Expect(tr.From).To(Equal(state))
		state = tr.To
	}
	g.Expect(b.Snapshot().State).To(Equal(state))
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
