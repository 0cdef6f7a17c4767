package breaker

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestFollow(t *testing.T) {
	settings := Settings{FailureThreshold: 2, RecoveryTimeout: time.Minute}
	cases := []struct {
		name string
		// prepare puts the breaker into its own state, returning its
		// last transition time.
		prepare       func(g Gomega, b *Breaker) time.Time
		decision      func(own time.Time) Decision
		wantFollowed  bool
		wantState     State
		wantOpenUntil func(own time.Time) time.Time
	}{{
		name:    "a newer opening is followed with its openUntil",
		prepare: func(Gomega, *Breaker) time.Time { return epoch },
		decision: func(own time.Time) Decision {
			return Decision{State: StateOpen, At: epoch.Add(time.Second), OpenUntil: epoch.Add(50 * time.Second), Reason: "following r1"}
		},
		wantFollowed: true, wantState: StateOpen,
		wantOpenUntil: func(time.Time) time.Time { return epoch.Add(50 * time.Second) },
	}, {
		name:    "an older opening is not",
		prepare: func(Gomega, *Breaker) time.Time { return epoch },
		decision: func(own time.Time) Decision {
			return Decision{State: StateOpen, At: own.Add(-time.Second), OpenUntil: own.Add(time.Minute)}
		},
		wantState: StateClosed,
	}, {
		name:    "nor one at the same time: followed decisions never echo back",
		prepare: func(Gomega, *Breaker) time.Time { return epoch },
		decision: func(own time.Time) Decision {
			return Decision{State: StateOpen, At: own, OpenUntil: own.Add(time.Minute)}
		},
		wantState: StateClosed,
	}, {
		name:    "an openUntil beyond the recovery timeout is cut to it",
		prepare: func(Gomega, *Breaker) time.Time { return epoch },
		decision: func(time.Time) Decision {
			return Decision{State: StateOpen, At: epoch.Add(time.Second), OpenUntil: epoch.Add(24 * time.Hour)}
		},
		wantFollowed: true, wantState: StateOpen,
		wantOpenUntil: func(time.Time) time.Time { return epoch.Add(time.Second + time.Minute) },
	}, {
		name: "an adaptive opening is followed up to the longest the settings allow",
		prepare: func(_ Gomega, b *Breaker) time.Time {
			s := b.settings
			s.OpenMultiplier, s.MaxOpenDuration, s.OpenJitter = 2, 10*time.Minute, 10
			b.Update(s)
			return epoch
		},
		decision: func(time.Time) Decision {
			return Decision{State: StateOpen, At: epoch.Add(time.Second), OpenUntil: epoch.Add(time.Second + 8*time.Minute)}
		},
		wantFollowed: true, wantState: StateOpen,
		wantOpenUntil: func(time.Time) time.Time { return epoch.Add(time.Second + 8*time.Minute) },
	}, {
		name:    "a decision far in the future is not followed",
		prepare: func(Gomega, *Breaker) time.Time { return epoch },
		decision: func(time.Time) Decision {
			return Decision{State: StateOpen, At: epoch.Add(time.Second + MaxFollowSkew + time.Millisecond)}
		},
		wantState: StateClosed,
	}, {
		name: "a newer close closes an open breaker",
		prepare: func(g Gomega, b *Breaker) time.Time {
			fail(g, b, 2)
			return b.Snapshot().LastTransitionTime
		},
		decision: func(own time.Time) Decision {
			return Decision{State: StateClosed, At: own.Add(time.Millisecond), Reason: "probes succeeded on r1"}
		},
		wantFollowed: true, wantState: StateClosed,
	}, {
		name: "a newer opening moves both open breakers' probing to its own",
		prepare: func(g Gomega, b *Breaker) time.Time {
			fail(g, b, 2)
			return b.Snapshot().LastTransitionTime
		},
		decision: func(own time.Time) Decision {
			return Decision{State: StateOpen, At: own.Add(time.Millisecond), OpenUntil: own.Add(time.Millisecond + time.Minute)}
		},
		wantState:     StateOpen,
		wantOpenUntil: func(own time.Time) time.Time { return own.Add(time.Millisecond + time.Minute) },
	}, {
		name: "a half-open is no decision: each replica reaches it by itself",
		prepare: func(g Gomega, b *Breaker) time.Time {
			fail(g, b, 2)
			return b.Snapshot().LastTransitionTime
		},
		decision: func(own time.Time) Decision {
			return Decision{State: StateHalfOpen, At: own.Add(time.Millisecond)}
		},
		wantState: StateOpen,
	}, {
		name: "a probe failure elsewhere re-opens a half-open breaker, though its half-open came later",
		prepare: func(g Gomega, b *Breaker) time.Time {
			fail(g, b, 2)
			opened := b.Snapshot().LastTransitionTime
			b.clock.(interface{ Step(time.Duration) }).Step(time.Minute)
			g.Expect(b.Snapshot().State).To(Equal(StateHalfOpen))
			return opened
		},
		decision: func(own time.Time) Decision {
			// The other replica went half-open a moment earlier and its probe failed.
			return Decision{State: StateOpen, At: own.Add(time.Minute - time.Millisecond), OpenUntil: own.Add(2*time.Minute - time.Millisecond)}
		},
		wantFollowed: true, wantState: StateOpen,
		wantOpenUntil: func(own time.Time) time.Time { return own.Add(2*time.Minute - time.Millisecond) },
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			b, clk, rec := newTestBreaker(settings)
			own := tc.prepare(g, b)
			clk.Step(time.Second) // the decision arrives a moment later
			before := len(rec.states())
			d := tc.decision(own)
			g.Expect(b.Follow(d)).To(Equal(tc.wantFollowed))
			snap := b.Snapshot()
			g.Expect(snap.State).To(Equal(tc.wantState))
			if tc.wantOpenUntil != nil {
				g.Expect(snap.OpenUntil).To(Equal(tc.wantOpenUntil(own)))
			}
			if tc.wantFollowed {
				g.Expect(rec.states()).To(HaveLen(before+1), "a followed decision is a transition of this breaker")
				g.Expect(snap.LastTransitionTime).To(Equal(d.At), "kept at the decision's own time, so it never looks newer to the replica it came from")
				g.Expect(snap.History[len(snap.History)-1].Reason).To(Equal(d.Reason))
				g.Expect(b.Follow(d)).To(BeFalse(), "the same decision twice is followed once")
			} else {
				g.Expect(rec.states()).To(HaveLen(before))
			}
		})
	}
}

// Outcomes of calls admitted before a followed decision count for nothing,
// as after any transition.
func TestFollowIgnoresEarlierCalls(t *testing.T) {
	g := NewWithT(t)
	b, clk, _ := newTestBreaker(Settings{FailureThreshold: 1, RecoveryTimeout: time.Minute})
	ticket, err := b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
	clk.Step(time.Second)
	g.Expect(b.Follow(Decision{State: StateOpen, At: clk.Now(), OpenUntil: clk.Now().Add(time.Minute)})).To(BeTrue())
	g.Expect(b.Follow(Decision{State: StateClosed, At: clk.Now().Add(time.Millisecond)})).To(BeTrue())
	ticket.Failure(http503)
	g.Expect(b.Snapshot().State).To(Equal(StateClosed))
	g.Expect(b.Snapshot().Failures).To(BeZero())
	_, err = b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
}
