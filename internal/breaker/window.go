package breaker

import (
	"strconv"
	"time"
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
