package breaker

import (
	"errors"
	"time"
)

// Mode is how a breaker acts on calls.
type Mode int

const (
	// ModeEnforce rejects calls while the circuit is open: the default.
	ModeEnforce Mode = iota
	// ModeObserve never rejects: the state machine runs as a shadow, and
	// what it would reject is counted as rejected.
	ModeObserve
	// ModeForcedOpen rejects every call, with no probes and no automatic
	// transitions.
	ModeForcedOpen
	// ModeDisabled passes every call and counts nothing.
	ModeDisabled
)

// ErrForcedOpen rejects a call while the breaker is forced open: no probing
// time can be given.
var ErrForcedOpen = errors.New("circuit breaker is forced open")

// modeNames spell modes as the resource does.
var modeNames = map[Mode]string{ModeEnforce: "Enforce", ModeObserve: "Observe", ModeForcedOpen: "ForcedOpen", ModeDisabled: "Disabled"}

// String returns the mode's name, as the resource spells it.
func (m Mode) String() string { return modeNames[m] }

// rejection is what Allow returns for a call the state machine rejects
// with err: nothing in Observe, whose rejected calls pass.
func (m Mode) rejection(err error) error {
	if m == ModeObserve {
		return nil
	}
	return err
}

// forceOpenLocked opens the circuit for ForcedOpen: no probing time, no
// automatic way out.
func (b *Breaker) forceOpenLocked(now time.Time) *Transition {
	t := b.setStateLocked(StateOpen, now, "mode ForcedOpen")
	b.openUntil = time.Time{}
	b.lastOpenReason = OpenForced
	t.OpenReason = OpenForced
	b.history[len(b.history)-1].OpenReason = OpenForced
	return t
}

// enterModeLocked starts the breaker afresh in the mode it was just given:
// forced open for ForcedOpen, else Closed with an empty window.
func (b *Breaker) enterModeLocked(now time.Time) *Transition {
	if b.settings.Mode == ModeForcedOpen {
		return b.forceOpenLocked(now)
	}
	fired := b.setStateLocked(StateClosed, now, "mode "+modeNames[b.settings.Mode])
	b.failures = 0
	return fired
}

// restoreModeLocked keeps a ForcedOpen breaker forced open across a restore
// of s: still, with no probing time, if it was forced open before the
// restart, else forced open now.
func (b *Breaker) restoreModeLocked(s Snapshot) {
	if b.settings.Mode != ModeForcedOpen {
		return
	}
	if s.State == StateOpen && s.LastOpenReason == OpenForced {
		// Forced open before the restart: still, with no probing time.
		b.openUntil = time.Time{}
	} else {
		b.forceOpenLocked(b.clock.Now())
	}
}
