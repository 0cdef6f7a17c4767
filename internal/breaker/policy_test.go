package breaker

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	clocktesting "k8s.io/utils/clock/testing"
)

// outcome is one call in a policy test: it fails, takes a while, or its
// caller leaves.
type outcome struct {
	fail  bool
	took  time.Duration
	left  bool
	after time.Duration // clock step before the call
}

func run(g Gomega, b *Breaker, clk interface{ Step(time.Duration) }, calls []outcome) {
	for _, c := range calls {
		clk.Step(c.after)
		t, err := b.Allow()
		g.Expect(err).NotTo(HaveOccurred())
		clk.Step(c.took)
		switch {
		case c.left:
			t.Cancel()
		case c.fail:
			t.Failure(http503)
		default:
			t.Success()
		}
	}
}

func repeat(n int, o outcome) []outcome {
	out := make([]outcome, n)
	for i := range out {
		out[i] = o
	}
	return out
}

func TestRateRules(t *testing.T) {
	rate := Settings{ConsecutiveRuleOff: true, Window: 10 * time.Second, MinimumRequests: 10, FailureRateThreshold: 50, RecoveryTimeout: time.Minute}
	slow := Settings{ConsecutiveRuleOff: true, Window: 10 * time.Second, MinimumRequests: 4, SlowCallDuration: time.Second,
		SlowCallRateThreshold: 50, RecoveryTimeout: time.Minute}
	cases := []struct {
		name       string
		settings   Settings
		calls      []outcome
		wantState  State
		wantReason OpenReason
		wantText   string
	}{{
		name: "9 failures of 9 calls below minimumRequests of 10 do not open", settings: rate,
		calls: repeat(9, outcome{fail: true}), wantState: StateClosed,
	}, {
		name: "exactly the threshold opens", settings: rate,
		calls:     append(repeat(5, outcome{}), repeat(5, outcome{fail: true})...),
		wantState: StateOpen, wantReason: OpenFailureRate, wantText: "failure rate 50% of 10 calls in 10s >= 50%, last: 503",
	}, {
		name: "just under the threshold does not", settings: rate,
		calls: append(repeat(6, outcome{}), repeat(4, outcome{fail: true})...), wantState: StateClosed,
	}, {
		name: "the rule is OR-ed with the consecutive one",
		settings: Settings{FailureThreshold: 3, Window: 10 * time.Second, MinimumRequests: 100, FailureRateThreshold: 50,
			RecoveryTimeout: time.Minute},
		calls: repeat(3, outcome{fail: true}), wantState: StateOpen, wantReason: OpenConsecutiveFailures,
	}, {
		name: "failures older than the window are evicted: 9 failures, 10 s pass, then 1 success and 1 failure", settings: rate,
		calls:     append(repeat(9, outcome{fail: true}), outcome{after: 10 * time.Second}, outcome{fail: true}),
		wantState: StateClosed,
	}, {
		name: "a bucket is kept until the window has passed it: 9 failures, 9.9 s, then 1 success", settings: rate,
		calls:     append(repeat(9, outcome{fail: true}), outcome{after: 9900 * time.Millisecond}),
		wantState: StateOpen, wantReason: OpenFailureRate, wantText: "failure rate 90% of 10 calls in 10s >= 50%, last: 503",
	}, {
		name: "slow calls open by their rate", settings: slow,
		calls:     append(repeat(2, outcome{}), repeat(2, outcome{took: 1100 * time.Millisecond})...),
		wantState: StateOpen, wantReason: OpenSlowCallRate, wantText: "slow call rate 50% of 4 calls in 10s >= 50% (slower than 1s)",
	}, {
		name: "a slow failure counts in both rates",
		settings: Settings{ConsecutiveRuleOff: true, Window: 10 * time.Second, MinimumRequests: 2, FailureRateThreshold: 100,
			SlowCallDuration: time.Second, SlowCallRateThreshold: 100, RecoveryTimeout: time.Minute},
		calls:     repeat(2, outcome{fail: true, took: 2 * time.Second}),
		wantState: StateOpen, wantReason: OpenFailureRate,
	}, {
		name: "a caller that left after the slow-call threshold counts as slow, not failed", settings: slow,
		calls:     append(repeat(2, outcome{}), repeat(2, outcome{left: true, took: 1500 * time.Millisecond})...),
		wantState: StateOpen, wantReason: OpenSlowCallRate,
	}, {
		name: "a caller that left sooner counts for nothing", settings: slow,
		calls: append(repeat(3, outcome{}), repeat(10, outcome{left: true, took: 500 * time.Millisecond})...), wantState: StateClosed,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			b, clk, rec := newTestBreaker(tc.settings)
			run(g, b, clk, tc.calls)
			snap := b.Snapshot()
			g.Expect(snap.State).To(Equal(tc.wantState))
			g.Expect(snap.LastOpenReason).To(Equal(tc.wantReason))
			if tc.wantText != "" {
				g.Expect(rec.transitions[len(rec.transitions)-1].Reason).To(Equal(tc.wantText))
			}
		})
	}
}

func TestWindowCountsAndClosingClearsIt(t *testing.T) {
	g := NewWithT(t)
	b, clk, _ := newTestBreaker(Settings{ConsecutiveRuleOff: true, Window: 10 * time.Second, MinimumRequests: 4,
		FailureRateThreshold: 50, SlowCallDuration: time.Second, SlowCallRateThreshold: 100, RecoveryTimeout: time.Minute})
	run(g, b, clk, []outcome{{}, {fail: true}, {took: 2 * time.Second}})
	snap := b.Snapshot()
	g.Expect([]uint32{snap.WindowOutcomes, snap.WindowFailures, snap.WindowSlow}).To(Equal([]uint32{3, 1, 1}))
	g.Expect(snap.FailureRate()).To(BeNumerically("~", 1.0/3, 1e-9))
	clk.Step(7 * time.Second) // t=9s: the first two calls (t=0) are still in; the slow one ended at t=2s
	g.Expect(b.Snapshot().WindowOutcomes).To(Equal(uint32(3)))
	clk.Step(time.Second)
	g.Expect(b.Snapshot().WindowOutcomes).To(Equal(uint32(1)), "evicted on the bucket's boundary")

	run(g, b, clk, repeat(3, outcome{fail: true}))
	g.Expect(b.Snapshot().State).To(Equal(StateOpen))
	clk.Step(time.Minute)
	run(g, b, clk, []outcome{{}}) // the probe succeeds
	snap = b.Snapshot()
	g.Expect(snap.State).To(Equal(StateClosed))
	g.Expect(snap.WindowOutcomes).To(BeZero(), "closing clears the window")
}

func TestOpenDuration(t *testing.T) {
	base := 10 * time.Second
	cases := []struct {
		name     string
		settings Settings
		// want is the n-th opening's time without jitter, n from 1.
		want []time.Duration
	}{
		{"fixed by default", Settings{RecoveryTimeout: base}, []time.Duration{base, base, base}},
		{"multiplied up to max", Settings{RecoveryTimeout: base, OpenMultiplier: 2, MaxOpenDuration: 50 * time.Second},
			[]time.Duration{base, 20 * time.Second, 40 * time.Second, 50 * time.Second, 50 * time.Second}},
		{"with jitter", Settings{RecoveryTimeout: base, OpenMultiplier: 3, MaxOpenDuration: time.Hour, OpenJitter: 10},
			[]time.Duration{base, 30 * time.Second, 90 * time.Second}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			tc.settings.FailureThreshold = 1
			b, clk, _ := newTestBreaker(tc.settings)
			for n, want := range tc.want {
				if n == 0 {
					fail(g, b, 1)
				} else {
					clk.Step(b.OpenUntil().Sub(clk.Now()))
					probe, err := b.Allow()
					g.Expect(err).NotTo(HaveOccurred())
					probe.Failure(http503)
				}
				snap := b.Snapshot()
				g.Expect(snap.ConsecutiveOpens).To(Equal(uint32(n + 1)))
				got := snap.OpenUntil.Sub(snap.LastTransitionTime)
				g.Expect(got).To(BeNumerically(">=", want), "opening %d", n+1)
				g.Expect(got).To(BeNumerically("<=", want+want*time.Duration(tc.settings.OpenJitter)/100), "opening %d", n+1)
			}
			clk.Step(b.OpenUntil().Sub(clk.Now()))
			succeed(g, b, 1)
			g.Expect(b.Snapshot().ConsecutiveOpens).To(BeZero(), "n returns to 0 when the breaker closes")
			fail(g, b, 1)
			g.Expect(b.OpenUntil().Sub(clk.Now())).To(BeNumerically("<=", base+base*time.Duration(tc.settings.OpenJitter)/100))
		})
	}
}

// Jitter spreads openings: over many breakers the times differ.
func TestOpenJitterSpreads(t *testing.T) {
	g := NewWithT(t)
	seen := map[time.Duration]bool{}
	for range 20 {
		b, clk, _ := newTestBreaker(Settings{FailureThreshold: 1, RecoveryTimeout: 10 * time.Second, OpenJitter: 50})
		fail(g, b, 1)
		seen[b.OpenUntil().Sub(clk.Now())] = true
	}
	g.Expect(len(seen)).To(BeNumerically(">", 1))
}

func TestHonorRetryAfter(t *testing.T) {
	settings := Settings{FailureThreshold: 1, RecoveryTimeout: 10 * time.Second, MaxOpenDuration: time.Minute, HonorRetryAfter: true}
	cases := []struct {
		name       string
		retryAfter time.Duration
		honor      bool
		want       time.Duration
		wantReason OpenReason
	}{
		{"within the bounds", 30 * time.Second, true, 30 * time.Second, OpenUpstreamRetryAfter},
		{"below recoveryTimeout: clamped up", time.Second, true, 10 * time.Second, OpenUpstreamRetryAfter},
		{"above max: clamped down", time.Hour, true, time.Minute, OpenUpstreamRetryAfter},
		{"not honoured unless asked", 30 * time.Second, false, 10 * time.Second, OpenConsecutiveFailures},
		{"no Retry-After", 0, true, 10 * time.Second, OpenConsecutiveFailures},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			s := settings
			s.HonorRetryAfter = tc.honor
			b, clk, _ := newTestBreaker(s)
			tk, _ := b.Allow()
			tk.Failure(Failure{StatusCode: 503, RetryAfter: tc.retryAfter})
			g.Expect(b.OpenUntil().Sub(clk.Now())).To(Equal(tc.want))
			g.Expect(b.Snapshot().LastOpenReason).To(Equal(tc.wantReason))
			// A probe failing with Retry-After is honoured alike.
			clk.Step(tc.want)
			probe, err := b.Allow()
			g.Expect(err).NotTo(HaveOccurred())
			probe.Failure(Failure{StatusCode: 429, RetryAfter: tc.retryAfter})
			g.Expect(b.OpenUntil().Sub(clk.Now())).To(Equal(tc.want))
		})
	}
}

func TestModes(t *testing.T) {
	cases := []struct {
		mode Mode
		// after threshold failures
		wantState   State
		wantAllowed bool
		wantErr     error
		wantFailure uint32
	}{
		{ModeEnforce, StateOpen, false, ErrOpen, 2},
		{ModeObserve, StateOpen, true, nil, 2},
		{ModeForcedOpen, StateOpen, false, ErrForcedOpen, 0},
		{ModeDisabled, StateClosed, true, nil, 0},
	}
	for _, tc := range cases {
		t.Run(tc.mode.String(), func(t *testing.T) {
			g := NewWithT(t)
			settings := Settings{FailureThreshold: 2, RecoveryTimeout: time.Minute, Mode: tc.mode}
			b, clk, rec := newTestBreaker(settings)
			for range 2 {
				if tk, err := b.Allow(); err == nil {
					tk.Failure(http503)
				}
			}
			snap := b.Snapshot()
			g.Expect(snap.State).To(Equal(tc.wantState))
			g.Expect(snap.Failures).To(Equal(tc.wantFailure))
			_, err := b.Allow()
			if tc.wantErr == nil {
				g.Expect(err).NotTo(HaveOccurred(), "admitted")
			} else {
				g.Expect(err).To(MatchError(tc.wantErr))
			}
			switch tc.mode {
			case ModeObserve:
				g.Expect(snap.Rejected+b.Snapshot().Rejected).To(BeNumerically(">", 0), "what it would reject is counted")
				clk.Step(time.Minute)
				g.Expect(b.Snapshot().State).To(Equal(StateHalfOpen), "the shadow runs on")
			case ModeForcedOpen:
				g.Expect(snap.LastOpenReason).To(Equal(OpenForced))
				g.Expect(snap.OpenUntil.IsZero()).To(BeTrue(), "no probing time")
				clk.Step(time.Hour)
				g.Expect(b.Snapshot().State).To(Equal(StateOpen), "no automatic transition")
				g.Expect(b.Reset("r1", "reset")).To(BeFalse(), "nor a reset")
				g.Expect(b.Snapshot().LastResetID).To(Equal("r1"), "which is handled all the same")
			case ModeDisabled:
				g.Expect(rec.transitions).To(BeEmpty())
			}

			// Leaving the mode: Closed, with nothing counted.
			for _, next := range []Mode{ModeEnforce, ModeObserve, ModeDisabled} {
				if next == tc.mode {
					continue
				}
				settings.Mode = next
				b.Update(settings)
				snap := b.Snapshot()
				g.Expect(snap.State).To(Equal(StateClosed), "left %s for %s", tc.mode, next)
				g.Expect(snap.Failures).To(BeZero())
				g.Expect(snap.WindowOutcomes).To(BeZero())
				break
			}
		})
	}
}

// Entering ForcedOpen from any state opens with reason Forced, and leaving
// it closes.
func TestForcedOpenEnteredAndLeft(t *testing.T) {
	g := NewWithT(t)
	settings := Settings{FailureThreshold: 2, RecoveryTimeout: time.Minute}
	b, _, rec := newTestBreaker(settings)
	settings.Mode = ModeForcedOpen
	b.Update(settings)
	g.Expect(rec.transitions).To(HaveLen(1))
	g.Expect(rec.transitions[0].OpenReason).To(Equal(OpenForced))
	_, err := b.Allow()
	g.Expect(err).To(MatchError(ErrForcedOpen))
	g.Expect(b.Follow(Decision{State: StateClosed, At: epoch.Add(time.Hour)})).To(BeFalse(), "a forced breaker follows no one")
	settings.Mode = ModeEnforce
	b.Update(settings)
	g.Expect(b.Snapshot().State).To(Equal(StateClosed))
	_, err = b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
}

// A forced-open breaker restored from its status stays forced open, with
// no probing time and no new transition.
func TestForcedOpenRestored(t *testing.T) {
	g := NewWithT(t)
	r := NewRegistry(clocktesting.NewFakeClock(epoch))
	saved := &Snapshot{State: StateOpen, LastTransitionTime: epoch.Add(-time.Hour), LastOpenReason: OpenForced}
	b, _ := r.Upsert(NewKey("shop", "forced"), "uid", Settings{Mode: ModeForcedOpen}, saved)
	snap := b.Snapshot()
	g.Expect(snap.State).To(Equal(StateOpen))
	g.Expect(snap.OpenUntil.IsZero()).To(BeTrue())
	g.Expect(snap.LastTransitionTime).To(Equal(epoch.Add(-time.Hour)), "no new transition")
	_, err := b.Allow()
	g.Expect(err).To(MatchError(ErrForcedOpen))

	// Restored Closed under ForcedOpen (the mode changed while the manager was down): forced now.
	b, _ = r.Upsert(NewKey("shop", "newly-forced"), "uid", Settings{Mode: ModeForcedOpen}, &Snapshot{State: StateClosed})
	g.Expect(b.Snapshot().State).To(Equal(StateOpen))
	g.Expect(b.Snapshot().LastOpenReason).To(Equal(OpenForced))
}
