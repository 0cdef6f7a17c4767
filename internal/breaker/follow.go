package breaker

import (
	"time"
)

// Decision is the state another replica's breaker reached, for this one to
// follow: counting stays per replica, the decision is the fleet's.
type Decision struct {
	State State
	// At is when the other replica's state changed.
	At time.Time
	// OpenUntil is, for Open, when the other replica starts probing.
	OpenUntil time.Time
	// Reason says why, and who decided.
	Reason string
	// OpenReason is the rule that opened the other replica's circuit.
	OpenReason OpenReason
}

// MaxFollowSkew bounds how far in this replica's future a decision may lie:
// one further ahead (a clock far off, a status written by hand) is not
// followed, since nothing newer could ever overrule it.
const MaxFollowSkew = 30 * time.Second

// Follow adopts d when it opens or closes the breaker later than this one
// last opened or closed, and reports whether that changed the state. An
// Open decision is followed with its openUntil (no later than its time plus
// the longest opening the settings allow), so every replica probes at the
// same moment. A
// HalfOpen is no decision to follow: each replica reaches it by itself at
// that shared openUntil. Calls allowed before are ignored, as after any
// transition.
func (b *Breaker) Follow(d Decision) bool {
	b.mu.Lock()
	fired := b.followLocked(d)
	b.mu.Unlock()
	b.notify(fired)
	return fired != nil
}

// followLocked is Follow; it returns the transition, nil when the state did
// not change.
func (b *Breaker) followLocked(d Decision) *Transition {
	now := b.clock.Now()
	if d.State == StateHalfOpen || !d.At.After(b.lastDecision) || d.At.After(now.Add(MaxFollowSkew)) ||
		b.settings.Mode == ModeForcedOpen || b.settings.Mode == ModeDisabled {
		return nil
	}
	openUntil := b.clampOpenUntilLocked(d.At, d.OpenUntil)
	switch {
	case d.State == b.state && d.State == StateOpen:
		// Both open: probe when the newer opening says.
		b.lastTransition, b.lastDecision = d.At, d.At
		b.openUntil = openUntil
		return nil
	case d.State == b.state:
		// Already closed: nothing to follow.
		return nil
	}
	fired := b.setStateLocked(d.State, d.At, d.Reason)
	if d.State == StateOpen {
		b.openUntil = openUntil
		b.consecutiveOpens++
		b.lastOpenReason = d.OpenReason
		fired.OpenReason = d.OpenReason
		b.history[len(b.history)-1].OpenReason = d.OpenReason
	}
	return fired
}

// clampOpenUntilLocked bounds an opening at from that a status says lasts
// until openUntil (zero: unknown) to the longest this breaker's own
// settings could make: no status, followed or restored, holds it open
// longer.
func (b *Breaker) clampOpenUntilLocked(from, openUntil time.Time) time.Time {
	longest := max(b.settings.MaxOpenDuration, b.settings.RecoveryTimeout)
	longest += longest * time.Duration(b.settings.OpenJitter) / 100
	if latest := from.Add(longest); openUntil.IsZero() || openUntil.After(latest) {
		return latest
	}
	return openUntil
}
