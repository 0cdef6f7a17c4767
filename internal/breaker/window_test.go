package breaker

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

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
