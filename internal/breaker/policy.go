package breaker

import (
	"errors"
	"math/rand/v2"
	"strconv"
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

// OpenReason says which rule opened the circuit, as the status spells it.
type OpenReason string

const (
	OpenConsecutiveFailures OpenReason = "ConsecutiveFailures"
	OpenFailureRate         OpenReason = "FailureRate"
	OpenSlowCallRate        OpenReason = "SlowCallRate"
	OpenUpstreamRetryAfter  OpenReason = "UpstreamRetryAfter"
	OpenProbeFailed         OpenReason = "ProbeFailed"
	OpenForced              OpenReason = "Forced"
)

// WindowBuckets is how many slices a rate window is kept in: each evicts
// whole, subtracting its counts from the window's (failsafe-go's 10).
const WindowBuckets = 10

// CoarseResolution is how often the registry's coarse clock advances. A
// call on a windowed breaker reads that clock, not the system's: bucket
// boundaries and call durations are off by at most this much, a tenth of
// the smallest bucket (a 1 s window has 100 ms buckets), and slow-call
// thresholds are meant in hundreds of milliseconds or more.
const CoarseResolution = 10 * time.Millisecond

// bucket is one slice of a window.
type bucket struct {
	epoch                    int64
	outcomes, failures, slow uint32
}

// window counts outcomes over the last WindowBuckets buckets.
type window struct {
	bucketNanos              int64
	buckets                  [WindowBuckets]bucket
	last                     int64 // the newest epoch seen
	outcomes, failures, slow uint32
}

func newWindow(d time.Duration) *window {
	n := int64(d) / WindowBuckets
	if n <= 0 {
		n = 1
	}
	return &window{bucketNanos: n}
}

// advance evicts the buckets that fell out of the window by now.
func (w *window) advance(now int64) {
	epoch := now / w.bucketNanos
	if epoch <= w.last {
		return
	}
	from := max(w.last+1, epoch-WindowBuckets+1)
	if epoch-w.last >= WindowBuckets {
		w.buckets, w.outcomes, w.failures, w.slow = [WindowBuckets]bucket{}, 0, 0, 0
	}
	for e := from; e <= epoch; e++ {
		b := &w.buckets[e%WindowBuckets]
		w.outcomes -= b.outcomes
		w.failures -= b.failures
		w.slow -= b.slow
		*b = bucket{epoch: e}
	}
	w.last = epoch
}

func (w *window) add(now int64, failed, slow bool) {
	w.advance(now)
	b := &w.buckets[(now/w.bucketNanos)%WindowBuckets]
	b.outcomes++
	w.outcomes++
	if failed {
		b.failures++
		w.failures++
	}
	if slow {
		b.slow++
		w.slow++
	}
}

func (w *window) clear() {
	w.buckets, w.outcomes, w.failures, w.slow, w.last = [WindowBuckets]bucket{}, 0, 0, 0, 0
}

// Windowed reports whether s keeps a rate window.
func (s Settings) Windowed() bool {
	return s.FailureRateThreshold > 0 || s.SlowCallRateThreshold > 0
}

// rateTripLocked returns the rule the window trips, and its figures for
// people, or "" while the window has fewer than MinimumRequests outcomes.
func (b *Breaker) rateTripLocked() (OpenReason, string) {
	w, s := b.window, &b.settings
	if w == nil || w.outcomes == 0 || w.outcomes < s.MinimumRequests {
		return "", ""
	}
	if t := s.FailureRateThreshold; t > 0 && uint64(w.failures)*100 >= uint64(t)*uint64(w.outcomes) {
		return OpenFailureRate, "failure rate " + percent(w.failures, w.outcomes) + " of " + pluralize(w.outcomes, "call") +
			" in " + s.Window.String() + " >= " + strconv.Itoa(int(t)) + "%"
	}
	if t := s.SlowCallRateThreshold; t > 0 && uint64(w.slow)*100 >= uint64(t)*uint64(w.outcomes) {
		return OpenSlowCallRate, "slow call rate " + percent(w.slow, w.outcomes) + " of " + pluralize(w.outcomes, "call") +
			" in " + s.Window.String() + " >= " + strconv.Itoa(int(t)) + "% (slower than " + s.SlowCallDuration.String() + ")"
	}
	return "", ""
}

func percent(n, of uint32) string {
	return strconv.FormatUint(uint64(n)*100/uint64(of), 10) + "%"
}

// openDurationLocked is how long the n-th consecutive opening lasts:
// recoveryTimeout × multiplier^(n−1), at most MaxOpenDuration, plus up to
// OpenJitter percent at random; or, honouring the upstream, its
// Retry-After clamped to [recoveryTimeout, MaxOpenDuration].
func (b *Breaker) openDurationLocked(retryAfter time.Duration) (time.Duration, bool) {
	s := &b.settings
	base, ceiling := s.RecoveryTimeout, max(s.MaxOpenDuration, s.RecoveryTimeout)
	if s.HonorRetryAfter && retryAfter > 0 {
		return min(max(retryAfter, base), ceiling), true
	}
	d := base
	for i := uint32(1); i < b.consecutiveOpens && s.OpenMultiplier > 1 && d < ceiling; i++ {
		d *= time.Duration(s.OpenMultiplier)
	}
	d = min(d, ceiling)
	if s.OpenJitter > 0 {
		d += time.Duration(rand.Int64N(int64(d)*int64(s.OpenJitter)/100 + 1)) //nolint:gosec // spreading probes needs no secret
	}
	return d, false
}

// openLocked opens the circuit for the rule that tripped and returns the
// transition.
func (b *Breaker) openLocked(now time.Time, reason OpenReason, message string, retryAfter time.Duration) *Transition {
	b.consecutiveOpens++
	d, honoured := b.openDurationLocked(retryAfter)
	if honoured {
		reason = OpenUpstreamRetryAfter
		message += "; upstream asked to retry after " + retryAfter.String()
	}
	t := b.setStateLocked(StateOpen, now, message)
	b.openUntil = now.Add(d)
	b.lastOpenReason = reason
	t.OpenReason = reason
	b.history[len(b.history)-1].OpenReason = reason
	return t
}
