// Package breaker is the circuit breaker state machine and the live registry
// of breakers. It has no Kubernetes dependencies: time comes from an injected
// clock and changes leave through a callback.
package breaker

import (
	"errors"
	"slices"
	"strconv"
	"sync"
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

// modeNames spell modes as the resource does.
var modeNames = map[Mode]string{ModeEnforce: "Enforce", ModeObserve: "Observe", ModeForcedOpen: "ForcedOpen", ModeDisabled: "Disabled"}

// String returns the mode's name, as the resource spells it.
func (m Mode) String() string { return modeNames[m] }

var (
	// ErrOpen rejects a call while the circuit is open.
	ErrOpen = errors.New("circuit breaker is open")
	// ErrProbeLimit rejects a call while half-open with every probe slot taken.
	ErrProbeLimit = errors.New("circuit breaker is half-open and all probe slots are taken")
)

// Settings configure a Breaker. A zero field takes the documented default.
type Settings struct {
	// FailureThreshold is the number of consecutive failures that open the circuit. Default 5.
	FailureThreshold uint32
	// RecoveryTimeout is how long the circuit stays open before probes are admitted. Default 30s.
	RecoveryTimeout time.Duration
	// HalfOpenMaxRequests is how many probes may be in flight at once while half-open. Default 1.
	HalfOpenMaxRequests uint32
	// SuccessThreshold is the number of successful probes in a row that close the circuit. Default 1.
	SuccessThreshold uint32
	// ConsecutiveRuleOff switches the FailureThreshold rule off, leaving
	// the rate rules.
	ConsecutiveRuleOff bool

	// Window is the time the rate rules look back over, kept in
	// WindowBuckets buckets; the rates are judged once it holds
	// MinimumRequests outcomes.
	Window          time.Duration
	MinimumRequests uint32
	// FailureRateThreshold opens the circuit when failures are at least
	// this percentage of the window's outcomes; 0 is off.
	FailureRateThreshold uint32
	// SlowCallDuration makes a call that takes longer slow (one whose
	// caller left after waiting longer, too); SlowCallRateThreshold opens
	// the circuit when slow calls are at least this percentage; 0 is off.
	SlowCallDuration      time.Duration
	SlowCallRateThreshold uint32

	// OpenMultiplier lengthens each consecutive opening:
	// RecoveryTimeout × OpenMultiplier^(n−1), at most MaxOpenDuration,
	// plus up to OpenJitter percent at random. 0 or 1: a fixed time.
	OpenMultiplier  uint32
	MaxOpenDuration time.Duration
	OpenJitter      uint32
	// HonorRetryAfter keeps the circuit open as long as the failure that
	// opened it asked in its Retry-After, within [RecoveryTimeout, MaxOpenDuration].
	HonorRetryAfter bool

	// Mode is how the breaker acts on calls.
	Mode Mode
}

func (s Settings) plainClosed() bool {
	return s.Mode != ModeDisabled && s.SlowCallRateThreshold == 0
}

// Defaults of Settings, the same as the CircuitBreaker resource's.
const (
	DefaultFailureThreshold    = 5
	DefaultRecoveryTimeout     = 30 * time.Second
	DefaultHalfOpenMaxRequests = 1
	DefaultSuccessThreshold    = 1
)

func (s Settings) withDefaults() Settings {
	if s.FailureThreshold == 0 {
		s.FailureThreshold = DefaultFailureThreshold
	}
	if s.RecoveryTimeout <= 0 {
		s.RecoveryTimeout = DefaultRecoveryTimeout
	}
	if s.HalfOpenMaxRequests == 0 {
		s.HalfOpenMaxRequests = DefaultHalfOpenMaxRequests
	}
	if s.SuccessThreshold == 0 {
		s.SuccessThreshold = DefaultSuccessThreshold
	}
	return s
}

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

// FailureRate is the window's failure rate, 0..1 (0 while it is empty).
func (s Snapshot) FailureRate() float64 { return rate(s.WindowFailures, s.WindowOutcomes) }

// SlowCallRate is the window's slow call rate, 0..1 (0 while it is empty).
func (s Snapshot) SlowCallRate() float64 { return rate(s.WindowSlow, s.WindowOutcomes) }

func rate(n, of uint32) float64 {
	if of == 0 {
		return 0
	}
	return float64(n) / float64(of)
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
		b.forceOpenLocked(b.clock.Now())
	}
	return b
}

// Ticket is the permission for one call. Report exactly one of Success,
// Failure or Cancel.
//
// A ticket without a breaker is inert and reports nothing: calls a
// Disabled breaker passes, and calls an Observe breaker would have rejected.
type Ticket struct {
	breaker    *Breaker
	generation uint64
	// start is the coarse time the call began, for the slow-call rule.
	start int64
	probe bool
}

// Allow asks permission for a call. It returns ErrOpen or ErrProbeLimit when
// the call must not reach the upstream.
func (b *Breaker) Allow() (Ticket, error) {
	b.mu.Lock()
	if b.state == StateClosed && b.plainClosed {
		b.allowed++
		generation := b.generation
		b.mu.Unlock()
		return Ticket{breaker: b, generation: generation}, nil
	}
	return b.allowLocked()
}

// allowLocked is Allow for everything but a plain Closed breaker.
func (b *Breaker) allowLocked() (Ticket, error) {
	switch {
	case b.settings.Mode == ModeDisabled:
		b.allowed++
		b.mu.Unlock()
		return Ticket{}, nil
	case b.state == StateClosed:
		b.allowed++
		t := Ticket{breaker: b, generation: b.generation}
		if b.settings.SlowCallRateThreshold > 0 {
			t.start = b.coarseNow()
		}
		b.mu.Unlock()
		return t, nil
	}
	switch b.settings.Mode {
	case ModeForcedOpen:
		b.rejected++
		b.mu.Unlock()
		return Ticket{}, ErrForcedOpen
	}
	var fired *Transition
	var err error
	switch {
	case b.state == StateOpen:
		if fired = b.halfOpenIfDueLocked(); fired == nil {
			err = ErrOpen
		} else if b.probesInFlight >= b.settings.HalfOpenMaxRequests {
			err = ErrProbeLimit
		}
	case b.probesInFlight >= b.settings.HalfOpenMaxRequests:
		err = ErrProbeLimit
	}
	if err != nil {
		b.rejected++
		b.mu.Unlock()
		b.notify(fired)
		if b.settings.Mode == ModeObserve {
			return Ticket{}, nil // what it would reject passes
		}
		return Ticket{}, err
	}
	b.allowed++
	b.probesInFlight++
	t := Ticket{breaker: b, generation: b.generation, probe: true}
	b.mu.Unlock()
	b.notify(fired)
	return t, nil
}

// Success reports that the call succeeded.
func (t Ticket) Success() {
	b := t.breaker
	if b == nil {
		return
	}
	b.mu.Lock()
	if t.generation == b.generation && b.state == StateClosed && b.failures == 0 && b.window == nil {
		b.mu.Unlock()
		return
	}
	t.successLocked()
}

// successLocked is Success for everything but a plain Closed breaker
// without failures to forget.
func (t Ticket) successLocked() {
	b := t.breaker
	if t.generation != b.generation {
		b.mu.Unlock()
		return
	}
	switch b.state {
	case StateClosed:
		if b.window != nil {
			fired := b.recordLocked(t, false)
			b.failures = 0
			b.mu.Unlock()
			if fired == nil {
				b.changed()
			}
			b.notify(fired)
			return
		}
		if b.failures == 0 {
			b.mu.Unlock()
			return
		}
		b.failures = 0
		b.mu.Unlock()
		b.changed()
		return
	case StateHalfOpen:
		b.probesInFlight--
		b.probeSuccesses++
		if b.probeSuccesses < b.settings.SuccessThreshold {
			b.mu.Unlock()
			return
		}
		fired := b.setStateLocked(StateClosed, b.clock.Now(),
			pluralize(b.probeSuccesses, "successful probe")+" in a row")
		b.mu.Unlock()
		b.notify(fired)
		return
	}
	b.mu.Unlock()
}

// Failure reports that the call failed, and why.
func (t Ticket) Failure(cause Failure) {
	b := t.breaker
	if b == nil {
		return
	}
	b.mu.Lock()
	if t.generation != b.generation {
		b.mu.Unlock()
		return
	}
	now := b.clock.Now()
	b.lastFailure = now
	b.lastFailureCause = cause
	var fired *Transition
	switch b.state {
	case StateClosed:
		b.failures++
		if !b.settings.ConsecutiveRuleOff && b.failures >= b.settings.FailureThreshold {
			fired = b.openLocked(now, OpenConsecutiveFailures,
				pluralize(b.failures, "consecutive failure")+", last: "+cause.String(), cause.RetryAfter)
		} else if b.window != nil {
			fired = b.recordLocked(t, true)
		}
	case StateHalfOpen:
		fired = b.openLocked(now, OpenProbeFailed, "probe failed: "+cause.String(), cause.RetryAfter)
	}
	b.mu.Unlock()
	if fired == nil {
		b.changed()
	}
	b.notify(fired)
}

// Cancel reports that the call ended with no verdict (the caller went away).
// It only gives back a probe slot.
func (t Ticket) Cancel() {
	b := t.breaker
	if b == nil {
		return
	}
	if !t.probe {
		if t.start == 0 {
			return
		}
		// A caller that left after waiting longer than the slow-call
		// threshold saw a slow call, though no failure.
		b.mu.Lock()
		var fired *Transition
		if t.generation == b.generation && b.state == StateClosed && b.window != nil &&
			b.coarseNow()-t.start > int64(b.settings.SlowCallDuration) {
			fired = b.recordLocked(t, false)
		}
		b.mu.Unlock()
		b.notify(fired)
		return
	}
	b.mu.Lock()
	if t.generation == b.generation && b.state == StateHalfOpen {
		b.probesInFlight--
	}
	b.mu.Unlock()
}

// recordLocked counts a Closed call's outcome in the window, and opens the
// circuit when a rate rule trips.
func (b *Breaker) recordLocked(t Ticket, failed bool) *Transition {
	now := b.coarseNow()
	slow := t.start != 0 && now-t.start > int64(b.settings.SlowCallDuration)
	b.window.add(now, failed, slow)
	reason, message := b.rateTripLocked()
	if reason == "" {
		return nil
	}
	if reason == OpenFailureRate && b.lastFailureCause != (Failure{}) {
		message += ", last: " + b.lastFailureCause.String()
	}
	var retryAfter time.Duration
	if failed {
		retryAfter = b.lastFailureCause.RetryAfter
	}
	return b.openLocked(b.clock.Now(), reason, message, retryAfter)
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

// Reset closes the breaker and clears its counts, once per id: a request to
// reset that is seen again (a requeue, a restart) does nothing; id must not
// be empty. Outcomes of calls allowed before the reset are ignored. It
// reports whether it reset.
func (b *Breaker) Reset(id, reason string) bool {
	b.mu.Lock()
	if id == b.lastResetID {
		b.mu.Unlock()
		return false
	}
	b.lastResetID = id
	if b.settings.Mode == ModeForcedOpen {
		// Forced open stays open until the mode changes; the reset is
		// handled, and changes nothing.
		b.mu.Unlock()
		return false
	}
	fired := b.setStateLocked(StateClosed, b.clock.Now(), reason)
	fired.Reset = true
	b.history[len(b.history)-1].Reset = true
	b.lastFailure = time.Time{}
	b.lastFailureCause = Failure{}
	b.mu.Unlock()
	b.notify(fired)
	return true
}

// Snapshot returns the current state. It also performs the time-driven
// Open → HalfOpen transition, so a breaker with no traffic still shows
// HalfOpen once its recovery timeout has passed.
func (b *Breaker) Snapshot() Snapshot {
	b.mu.Lock()
	var fired *Transition
	if b.state == StateOpen {
		fired = b.halfOpenIfDueLocked()
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

// Update applies new settings and keeps the current state and counts. A
// Closed breaker whose failures already reach a lowered threshold opens; an
// Open breaker's probing time follows a changed recovery timeout.
func (b *Breaker) Update(settings Settings) {
	settings = settings.withDefaults()
	b.mu.Lock()
	if b.settings == settings {
		b.mu.Unlock()
		return
	}
	old := b.settings
	b.settings = settings
	b.plainClosed = settings.plainClosed()
	if old.Windowed() != settings.Windowed() || old.Window != settings.Window {
		b.window = nil
		if settings.Windowed() {
			b.window = newWindow(settings.Window)
		}
	}
	var fired *Transition
	if old.Mode != settings.Mode {
		// Leaving a mode starts afresh: Closed, with an empty window.
		now := b.clock.Now()
		if settings.Mode == ModeForcedOpen {
			fired = b.forceOpenLocked(now)
		} else {
			fired = b.setStateLocked(StateClosed, now, "mode "+modeNames[settings.Mode])
			b.failures = 0
		}
		b.mu.Unlock()
		b.notify(fired)
		return
	}
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
	b.mu.Unlock()
	if fired == nil {
		b.changed()
	}
	b.notify(fired)
}

// OpenUntil is when probing starts; zero unless Open. It is the cheap
// question for a rejected call's Retry-After.
func (b *Breaker) OpenUntil() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != StateOpen {
		return time.Time{}
	}
	return b.openUntil
}

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
	now := b.clock.Now()
	if d.State == StateHalfOpen || !d.At.After(b.lastDecision) || d.At.After(now.Add(MaxFollowSkew)) ||
		b.settings.Mode == ModeForcedOpen || b.settings.Mode == ModeDisabled {
		b.mu.Unlock()
		return false
	}
	openUntil := d.OpenUntil
	// No opening lasts longer than this breaker's own longest could.
	longest := max(b.settings.MaxOpenDuration, b.settings.RecoveryTimeout)
	longest += longest * time.Duration(b.settings.OpenJitter) / 100
	if latest := d.At.Add(longest); openUntil.IsZero() || openUntil.After(latest) {
		openUntil = latest
	}
	var fired *Transition
	switch {
	case d.State == b.state && d.State == StateOpen:
		// Both open: probe when the newer opening says.
		b.lastTransition, b.lastDecision = d.At, d.At
		b.openUntil = openUntil
	case d.State == b.state:
		// Already closed: nothing to follow.
	default:
		fired = b.setStateLocked(d.State, d.At, d.Reason)
		if d.State == StateOpen {
			b.openUntil = openUntil
			b.consecutiveOpens++
			b.lastOpenReason = d.OpenReason
			fired.OpenReason = d.OpenReason
			b.history[len(b.history)-1].OpenReason = d.OpenReason
		}
	}
	b.mu.Unlock()
	b.notify(fired)
	return fired != nil
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
	b.lastTransition = s.LastTransitionTime
	b.lastDecision = s.LastTransitionTime
	b.openUntil = s.OpenUntil
	b.lastResetID = s.LastResetID
	b.history = slices.Clone(s.History)
	for i := range b.history {
		b.history[i].Seq = 0 // handled before the restart
	}
	if s.State == StateOpen && s.OpenUntil.IsZero() {
		b.openUntil = s.LastTransitionTime.Add(b.settings.RecoveryTimeout)
	}
	b.lastOpenReason = s.LastOpenReason
	b.consecutiveOpens = s.ConsecutiveOpens
	b.probesInFlight = 0
	b.probeSuccesses = 0
	if b.settings.Mode == ModeForcedOpen {
		if s.State == StateOpen && s.LastOpenReason == OpenForced {
			// Forced open before the restart: still, with no probing time.
			b.openUntil = time.Time{}
		} else {
			b.forceOpenLocked(b.clock.Now())
		}
	}
	b.mu.Unlock()
}

// halfOpenIfDueLocked moves an Open breaker whose recovery timeout has
// passed to HalfOpen, and returns that transition (nil if not yet due).
func (b *Breaker) halfOpenIfDueLocked() *Transition {
	if b.settings.Mode == ModeForcedOpen {
		return nil
	}
	now := b.clock.Now()
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
	return &t
}

func (b *Breaker) notify(t *Transition) {
	if t != nil && b.onTransition != nil {
		b.onTransition(*t)
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
