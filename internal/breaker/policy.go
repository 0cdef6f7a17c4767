package breaker

import (
	"math/rand/v2"
	"time"
)

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
