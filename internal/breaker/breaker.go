// Package breaker is the circuit breaker state machine and the live registry
// of breakers. It has no Kubernetes dependencies: time comes from an injected
// clock and changes leave through a callback.
package breaker

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
)

// State is the state of a circuit breaker.
type State int

const (
	StateClosed State = iota
	StateOpen
	StateHalfOpen
)

// String returns the state's name: "Closed", "Open" or "HalfOpen". Metrics
// labels and webhook documents print it as it is; the resource's status and
// the REST API spell states their own way, at the edges that print them.
func (s State) String() string {
	switch s {
	case StateClosed:
		return "Closed"
	case StateOpen:
		return "Open"
	case StateHalfOpen:
		return "HalfOpen"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

var (
	// ErrOpen rejects a call while the circuit is open.
	ErrOpen = errors.New("circuit breaker is open")
	// ErrProbeLimit rejects a call while half-open with every probe slot taken.
	ErrProbeLimit = errors.New("circuit breaker is half-open and all probe slots are taken")
)

// Failure describes why a call failed: an upstream status code, or the kind
// of error (timeout, connection refused, ...) when there was no response.
type Failure struct {
	StatusCode int
	Kind       string
	// RetryAfter is what a 429 or 503 answer asked for in its Retry-After.
	RetryAfter time.Duration
}

func (f Failure) String() string {
	if f.StatusCode != 0 {
		return strconv.Itoa(f.StatusCode)
	}
	if f.Kind == "" {
		return "error"
	}
	return f.Kind
}

// Transition is a change of state, delivered to the OnTransition callback.
type Transition struct {
	// Seq numbers the breaker's transitions from 1, so that a watcher can
	// tell which ones it has not handled yet; transitions restored from a
	// saved history have Seq 0.
	Seq      uint64
	From, To State
	At       time.Time
	// Reason says why, e.g. "5 consecutive failures, last: 503".
	Reason string
	// Reset is true when the transition was caused by Reset, not by traffic or time.
	Reset bool
	// OpenReason is the rule that opened the circuit, for a transition to Open.
	OpenReason OpenReason
}

// Breaker is one circuit breaker. It is safe for concurrent use.
//
// A call asks Allow for permission and reports its outcome on the returned
// Ticket. While Closed neither step reads the clock, so the hot path is a
// pair of uncontended mutex sections.
type Breaker struct {
	clock clock.PassiveClock
	// coarseNow is UnixNano from a clock a ticker advances (the registry's),
	// read on the calls of a windowed breaker instead of the system clock.
	coarseNow    func() int64
	onTransition func(Transition)
	// onChange is told that counts changed without a transition, so a watcher
	// can coalesce count updates instead of reacting to each call.
	onChange func()

	// mu guards the fields below. Every method locks it once, computes
	// into locals what is to be delivered, unlocks it and then delivers to
	// the hooks; helpers named ...Locked run with it held and never unlock.
	mu       sync.Mutex
	settings Settings
	state    State
	// generation advances on every transition and reset; outcomes reported
	// with an older generation are ignored.
	generation uint64
	// seq is the Seq of the last transition.
	seq              uint64
	failures         uint32
	probesInFlight   uint32
	probeSuccesses   uint32
	lastFailure      time.Time
	lastFailureCause Failure
	lastTransition   time.Time
	// lastDecision is when the breaker last opened or closed: what another
	// replica's decision must be newer than to be followed. HalfOpen is
	// not a decision; every replica reaches it by itself at openUntil.
	lastDecision time.Time
	openUntil    time.Time
	lastResetID  string
	history      []Transition
	allowed      uint64
	rejected     uint64
	// plainClosed is set while a Closed breaker's Allow has nothing to do
	// but count: it is neither Disabled nor timing calls for the slow rule.
	plainClosed bool
	// window counts outcomes for the rate rules; nil without them.
	window           *window
	consecutiveOpens uint32
	lastOpenReason   OpenReason
	// noEndpoints holds the circuit open: its upstream has no endpoint.
	noEndpoints bool

	// timeline is the last hour in minutes (timeline.go), started by the
	// first call or rejection; written under mu, read without it.
	timeline atomic.Pointer[Timeline]
}

// Options are the optional hooks of a Breaker. Both are called without any
// lock held and must not block for long: they run on the caller's goroutine.
type Options struct {
	OnTransition func(Transition)
	OnChange     func()
	// CoarseNow is a cheap UnixNano, advanced every CoarseResolution; by
	// default the clock is read.
	CoarseNow func() int64
}

// New returns a Closed breaker.
func New(settings Settings, clk clock.PassiveClock, opts Options) *Breaker {
	b := &Breaker{
		clock:          clk,
		coarseNow:      opts.CoarseNow,
		onTransition:   opts.OnTransition,
		onChange:       opts.OnChange,
		settings:       settings.withDefaults(),
		lastTransition: clk.Now(),
		lastDecision:   clk.Now(),
	}
	if b.coarseNow == nil {
		b.coarseNow = func() int64 { return clk.Now().UnixNano() }
	}
	if b.settings.Windowed() {
		b.window = newWindow(b.settings.Window)
	}
	b.plainClosed = b.settings.plainClosed()
	if b.settings.Mode == ModeForcedOpen {
		// b is not shared yet: no lock to take, nobody to tell.
		b.forceOpenLocked(b.clock.Now())
	}
	return b
}

// Allow asks permission for a call. It returns ErrOpen or ErrProbeLimit when
// the call must not reach the upstream.
func (b *Breaker) Allow() (Ticket, error) {
	var (
		t     Ticket
		fired *Transition
		err   error
	)
	b.mu.Lock()
	if b.state == StateClosed && b.plainClosed {
		b.allowed++
		t = Ticket{breaker: b, generation: b.generation}
	} else {
		t, fired, err = b.allowLocked()
	}
	b.mu.Unlock()
	b.notify(fired)
	return t, err
}

// allowLocked is Allow for everything but a plain Closed breaker. It returns
// the ticket, the transition to deliver and the error to return.
func (b *Breaker) allowLocked() (Ticket, *Transition, error) {
	switch {
	case b.settings.Mode == ModeDisabled:
		b.allowed++
		return Ticket{}, nil, nil
	case b.state == StateClosed:
		b.allowed++
		t := Ticket{breaker: b, generation: b.generation}
		if b.settings.SlowCallRateThreshold > 0 {
			t.start = b.coarseNow()
		}
		return t, nil, nil
	case b.settings.Mode == ModeForcedOpen:
		b.rejectLocked(b.clock.Now())
		return Ticket{}, nil, ErrForcedOpen
	}
	var fired *Transition
	var err error
	var now time.Time
	switch {
	case b.state == StateOpen:
		now = b.clock.Now()
		if fired = b.halfOpenIfDueLocked(now); fired == nil {
			err = ErrOpen
		} else if b.probesInFlight >= b.settings.HalfOpenMaxRequests {
			err = ErrProbeLimit
		}
	case b.probesInFlight >= b.settings.HalfOpenMaxRequests:
		now = b.clock.Now()
		err = ErrProbeLimit
	}
	if err != nil {
		b.rejectLocked(now)
		return Ticket{}, fired, b.settings.Mode.rejection(err)
	}
	b.allowed++
	b.probesInFlight++
	return Ticket{breaker: b, generation: b.generation, probe: true}, fired, nil
}

// Reset closes the breaker and clears its counts, once per id: a request to
// reset that is seen again (a requeue, a restart) does nothing; id must not
// be empty. Outcomes of calls allowed before the reset are ignored. It
// reports whether it reset.
func (b *Breaker) Reset(id, reason string) bool {
	b.mu.Lock()
	fired := b.resetLocked(id, reason)
	b.mu.Unlock()
	b.notify(fired)
	return fired != nil
}

// resetLocked is Reset; it returns the transition, nil when it did not reset.
func (b *Breaker) resetLocked(id, reason string) *Transition {
	if id == b.lastResetID {
		return nil
	}
	b.lastResetID = id
	if b.settings.Mode == ModeForcedOpen {
		// Forced open stays open until the mode changes; the reset is
		// handled, and changes nothing.
		return nil
	}
	fired := b.setStateLocked(StateClosed, b.clock.Now(), reason)
	fired.Reset = true
	b.history[len(b.history)-1].Reset = true
	b.lastFailure = time.Time{}
	b.lastFailureCause = Failure{}
	return fired
}

// Update applies new settings and keeps the current state and counts. A
// Closed breaker whose failures already reach a lowered threshold opens; an
// Open breaker's probing time follows a changed recovery timeout.
func (b *Breaker) Update(settings Settings) {
	settings = settings.withDefaults()
	b.mu.Lock()
	e := b.updateLocked(settings)
	b.mu.Unlock()
	b.deliver(e)
}

func (b *Breaker) updateLocked(settings Settings) effects {
	if b.settings == settings {
		return effects{}
	}
	old := b.settings
	b.settings = settings
	b.plainClosed = settings.plainClosed()
	if t := b.timeline.Load(); t != nil {
		t.slowAfter.Store(int64(settings.SlowCallDuration))
	}
	if old.Windowed() != settings.Windowed() || old.Window != settings.Window {
		b.window = nil
		if settings.Windowed() {
			b.window = newWindow(settings.Window)
		}
	}
	if old.Mode != settings.Mode {
		return effects{fired: b.enterModeLocked(b.clock.Now())}
	}
	var fired *Transition
	switch b.state {
	case StateClosed:
		if !settings.ConsecutiveRuleOff && b.failures > 0 && b.failures >= settings.FailureThreshold {
			fired = b.openLocked(b.clock.Now(), OpenConsecutiveFailures,
				pluralize(b.failures, "consecutive failure")+" reach the new threshold of "+strconv.Itoa(int(settings.FailureThreshold)), 0)
		}
	case StateOpen:
		if settings.Mode == ModeForcedOpen {
			break
		}
		b.openUntil = b.lastTransition.Add(settings.RecoveryTimeout)
	case StateHalfOpen:
		if b.probeSuccesses >= settings.SuccessThreshold {
			fired = b.setStateLocked(StateClosed, b.clock.Now(),
				pluralize(b.probeSuccesses, "successful probe")+" reach the new threshold of "+strconv.Itoa(int(settings.SuccessThreshold)))
		}
	}
	return effects{fired: fired, changed: true}
}

// OpenUntil is when probing starts; zero unless Open. It is the cheap
// question for a rejected call's Retry-After.
func (b *Breaker) OpenUntil() time.Time {
	var until time.Time
	b.mu.Lock()
	if b.state == StateOpen {
		until = b.openUntil
	}
	b.mu.Unlock()
	return until
}

// WholeSecondsUntil is the time from now until t in whole seconds, rounded
// up, and 0 once t has passed: how Retry-After and the API count down to
// probing.
func WholeSecondsUntil(t, now time.Time) int64 {
	d := t.Sub(now)
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// halfOpenIfDueLocked moves an Open breaker whose recovery timeout has
// passed to HalfOpen, and returns that transition (nil if not yet due).
func (b *Breaker) halfOpenIfDueLocked(now time.Time) *Transition {
	if b.settings.Mode == ModeForcedOpen || b.noEndpoints {
		return nil
	}
	if now.Before(b.openUntil) {
		return nil
	}
	return b.setStateLocked(StateHalfOpen, now, "recovery timeout of "+b.settings.RecoveryTimeout.String()+" elapsed")
}

// setStateLocked moves to a new state, starts a new generation and returns
// the transition to deliver once the lock is released.
func (b *Breaker) setStateLocked(to State, now time.Time, reason string) *Transition {
	from := b.state
	b.state = to
	b.generation++
	b.lastTransition = now
	if to != StateHalfOpen {
		b.lastDecision = now
	}
	if to == StateClosed {
		b.failures = 0
		b.consecutiveOpens = 0
		if b.window != nil {
			b.window.clear()
		}
	}
	b.probesInFlight = 0
	b.probeSuccesses = 0
	b.openUntil = time.Time{}
	if to == StateOpen {
		b.openUntil = now.Add(b.settings.RecoveryTimeout)
	}
	b.seq++
	t := Transition{Seq: b.seq, From: from, To: to, At: now, Reason: reason}
	if len(b.history) == HistoryLimit {
		b.history = append(b.history[:0], b.history[1:]...)
	}
	b.history = append(b.history, t)
	if tl := b.timeline.Load(); tl != nil {
		// The clock's now, not the transition's time: a followed
		// decision carries the other replica's.
		tl.transition(b.clock.Now(), to)
	}
	return &t
}

func (b *Breaker) notify(t *Transition) {
	if t != nil && b.onTransition != nil {
		b.onTransition(*t)
	}
}

// effects is what a locked section leaves to deliver once the lock is
// released: a transition for OnTransition or, without one, a change of
// counts for OnChange.
type effects struct {
	fired   *Transition
	changed bool
}

// deliver tells the hooks about e; the lock must not be held. It inlines,
// so that the common case of nothing to deliver costs no call.
func (b *Breaker) deliver(e effects) {
	if e.fired != nil || e.changed {
		b.deliverHooks(e)
	}
}

func (b *Breaker) deliverHooks(e effects) {
	if e.fired != nil {
		b.notify(e.fired)
	} else {
		b.changed()
	}
}

func (b *Breaker) changed() {
	if b.onChange != nil {
		b.onChange()
	}
}

func pluralize(n uint32, noun string) string {
	s := strconv.FormatUint(uint64(n), 10) + " " + noun
	if n != 1 {
		s += "s"
	}
	return s
}
