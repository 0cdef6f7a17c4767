package breaker

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
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
