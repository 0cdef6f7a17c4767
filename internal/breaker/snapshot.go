package breaker

import (
	"slices"
	"time"
)

// HistoryLimit is how many transitions a breaker remembers.
const HistoryLimit = 10

// Snapshot is a consistent copy of a breaker's observable state.
type Snapshot struct {
	// At is when the snapshot was taken, by the breaker's clock.
	At    time.Time
	State State
	// Failures counts consecutive failures in the current Closed period or,
	// while Open or HalfOpen, the failures that opened the circuit.
	Failures           uint32
	LastFailure        time.Time
	LastFailureCause   Failure
	LastTransitionTime time.Time
	// OpenUntil is when probing starts; zero unless Open.
	OpenUntil time.Time
	// LastResetID is the id of the last Reset performed.
	LastResetID string
	// History holds the last HistoryLimit transitions, oldest first.
	History []Transition
	// Allowed and Rejected count the calls admitted and refused since the
	// breaker was created (not restored across restarts).
	Allowed, Rejected uint64
	Settings          Settings
	// LastOpenReason is the rule that last opened the circuit.
	LastOpenReason OpenReason
	// ConsecutiveOpens counts the openings since the circuit last closed.
	ConsecutiveOpens uint32
	// WindowOutcomes, WindowFailures and WindowSlow are the rate window's
	// counts (zero without one).
	WindowOutcomes, WindowFailures, WindowSlow uint32
}

// Snapshot returns the current state. It also performs the time-driven
// Open → HalfOpen transition, so a breaker with no traffic still shows
// HalfOpen once its recovery timeout has passed.
func (b *Breaker) Snapshot() Snapshot {
	var fired *Transition
	b.mu.Lock()
	if b.state == StateOpen {
		fired = b.halfOpenIfDueLocked(b.clock.Now())
	}
	s := b.snapshotLocked()
	s.At = b.clock.Now()
	b.mu.Unlock()
	b.notify(fired)
	return s
}

func (b *Breaker) snapshotLocked() Snapshot {
	s := Snapshot{
		State:              b.state,
		Failures:           b.failures,
		LastFailure:        b.lastFailure,
		LastFailureCause:   b.lastFailureCause,
		LastTransitionTime: b.lastTransition,
		LastResetID:        b.lastResetID,
		History:            slices.Clone(b.history),
		Allowed:            b.allowed,
		Rejected:           b.rejected,
		Settings:           b.settings,
		LastOpenReason:     b.lastOpenReason,
		ConsecutiveOpens:   b.consecutiveOpens,
	}
	if w := b.window; w != nil {
		w.advance(b.coarseNow())
		s.WindowOutcomes, s.WindowFailures, s.WindowSlow = w.outcomes, w.failures, w.slow
	}
	if b.state == StateOpen {
		s.OpenUntil = b.openUntil
	}
	return s
}

// restore puts the breaker into a state recorded earlier, e.g. in a
// resource's status before a manager restart. An Open breaker whose
// openUntil has passed becomes HalfOpen on its next call.
func (b *Breaker) restore(s Snapshot) {
	b.mu.Lock()
	b.generation++
	b.state = s.State
	b.failures = s.Failures
	b.lastFailure = s.LastFailure
	b.lastFailureCause = s.LastFailureCause
	// A transition from the future (a clock far off, a status written by
	// hand) happened now, and its opening lasts no longer than the
	// settings allow.
	at := s.LastTransitionTime
	if now := b.clock.Now(); at.After(now) {
		at = now
	}
	b.lastTransition = at
	b.lastDecision = at
	b.openUntil = s.OpenUntil
	b.lastResetID = s.LastResetID
	b.history = slices.Clone(s.History)
	for i := range b.history {
		b.history[i].Seq = 0 // handled before the restart
	}
	if s.State == StateOpen {
		if s.OpenUntil.IsZero() {
			b.openUntil = at.Add(b.settings.RecoveryTimeout)
		}
		// A status keeps whole seconds (the transition rounded down, the
		// opening's end up): a second of slack for that.
		b.openUntil = b.clampOpenUntilLocked(at.Add(time.Second), b.openUntil)
	}
	b.lastOpenReason = s.LastOpenReason
	b.consecutiveOpens = s.ConsecutiveOpens
	b.probesInFlight = 0
	b.probeSuccesses = 0
	b.restoreModeLocked(s)
	b.mu.Unlock()
}

// State returns the current state, as Snapshot would, without copying the
// rest (the REST API reads it of every breaker to count them).
func (b *Breaker) State() State {
	var fired *Transition
	b.mu.Lock()
	if b.state == StateOpen {
		fired = b.halfOpenIfDueLocked(b.clock.Now())
	}
	st := b.state
	b.mu.Unlock()
	b.notify(fired)
	return st
}
