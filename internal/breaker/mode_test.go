package breaker

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	clocktesting "k8s.io/utils/clock/testing"
)

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
