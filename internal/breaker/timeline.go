package breaker

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
)

// TimelineMinutes is how many one-minute points a timeline keeps: the
// last hour.
const TimelineMinutes = 60

// Latency histogram of a timeline minute: latencyBuckets counters on a log
// scale of microseconds. Bucket 0 is [0, 64 µs); then two buckets per
// octave, [1, 1.5)·2^e and [1.5, 2)·2^e µs, for e from 6 (64 µs) to 24
// (up to 33.6 s); the last bucket is everything from 2^25 µs (33.6 s) on.
// A quantile is read as its bucket's midpoint: within 20% of the true value
// from 64 µs to 33.6 s, at most 32 µs off below.
const (
	latencyMinExp   = 6
	latencyMaxExp   = 25
	latencyBuckets  = 2 + 2*(latencyMaxExp-latencyMinExp)
	latencyOverflow = latencyBuckets - 1
)

// stateBits in a minute's states word: bits 0..2 are the states seen in
// the minute (1<<State), bits 4..5 the state the minute started in.
const startShift = 4

// minute is one minute of a timeline. Its counters are atomics, so that
// recording a call takes no lock; only the first record of a minute
// takes the timeline's lock, to claim the slot.
type minute struct {
	// at is the Unix minute (Unix seconds / 60) the slot counts;
	// math.MinInt64 until the slot is first used.
	at                                atomic.Int64
	calls, failures, rejections, slow atomic.Uint32
	states                            atomic.Uint32
	// p99 is the minute's p99 in microseconds, written when its histogram
	// is taken over by a later minute; until then it is read from the
	// histogram.
	p99 atomic.Uint32
}

// histogram counts the latencies of one minute.
type histogram struct {
	at     atomic.Int64
	counts [latencyBuckets]atomic.Uint32
}

// Timeline is a breaker's last hour in one-minute points: calls, failures,
// rejections, slow calls, an approximate p99 latency and the worst state
// of each minute. It is a ring of TimelineMinutes slots indexed by the
// Unix minute, each stamped with the minute it holds: a slot whose stamp is
// not the minute asked for is empty for that minute (it holds a minute an
// hour or more older, or nothing). A breaker gets its timeline on its
// first call or rejection (Breaker.RecordCall, Allow): one without traffic
// keeps none.
//
// Latencies are counted in two histograms, one for even minutes and one
// for odd ones: the current minute's, and the previous one's, which late
// calls may still reach. When a minute takes a histogram over, the p99 of
// the minute it held is computed and kept in that minute's slot, so the
// other 58 minutes keep one number each and not a histogram (a timeline
// is a fifth of the size it would be with a histogram per minute).
//
// Every state change is put on the timeline too (setStateLocked), so a
// minute with no call and no transition was spent wholly in the state the
// next recorded minute started in, or in the current state when no minute
// was recorded since: Points reads such minutes as zero points in that
// state.
type Timeline struct {
	clock clock.PassiveClock
	// mu serialises the claims of slots for new minutes.
	mu sync.Mutex
	// first is the minute the timeline started: Points returns none older.
	first int64
	// current is the breaker's state, as of its last transition.
	current atomic.Uint32
	// slowAfter is the breaker's slow-call duration (nanoseconds); 0: no
	// call is slow.
	slowAfter atomic.Int64
	minutes   [TimelineMinutes]minute
	latency   [2]histogram
}

// TimelinePoint is one minute of a timeline.
type TimelinePoint struct {
	// Time is the minute's start.
	Time time.Time
	// Calls counts the calls that ended in the minute with a verdict
	// (Failures of them failed, Slow of them took longer than the
	// slow-call duration); Rejections the calls refused in the minute.
	Calls, Failures, Rejections, Slow uint32
	// P99 is the 99th percentile of the calls' latencies, read from the
	// histogram (within 20%); 0 without calls.
	P99 time.Duration
	// State is the worst state the breaker was in during the minute: Open
	// over HalfOpen over Closed.
	State State
}

func newTimeline(clk clock.PassiveClock, state State, slowAfter time.Duration) *Timeline {
	t := &Timeline{clock: clk, first: unixMinute(clk.Now())}
	for i := range t.minutes {
		t.minutes[i].at.Store(math.MinInt64)
	}
	for i := range t.latency {
		t.latency[i].at.Store(math.MinInt64)
	}
	t.current.Store(uint32(state))
	t.slowAfter.Store(int64(slowAfter))
	return t
}

// unixMinute is the Unix minute of at, rounded down.
func unixMinute(at time.Time) int64 {
	s := at.Unix()
	m := s / 60
	if s < 0 && s%60 != 0 {
		m--
	}
	return m
}

func slotOf(m int64) int {
	s := m % TimelineMinutes
	if s < 0 {
		s += TimelineMinutes
	}
	return int(s)
}

// at returns the slot of minute m, claimed for it; nil when it holds a
// newer minute (a record an hour late: dropped).
func (t *Timeline) at(m int64) *minute {
	b := &t.minutes[slotOf(m)]
	if b.at.Load() == m {
		return b
	}
	return t.claim(b, m)
}

// claim empties slot b for minute m. The stamp is written last: a writer
// that sees it counts into the emptied slot. A writer that saw the old
// stamp just before may still count into the new minute: a call or two at
// the turn of the minute, an hour after the slot was last used.
func (t *Timeline) claim(b *minute, m int64) *minute {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch at := b.at.Load(); {
	case at == m:
		return b
	case at > m:
		return nil
	}
	b.calls.Store(0)
	b.failures.Store(0)
	b.rejections.Store(0)
	b.slow.Store(0)
	b.p99.Store(0)
	t.claimHistogram(m)
	cur := t.current.Load()
	b.states.Store(1<<cur | cur<<startShift)
	b.at.Store(m)
	return b
}

// claimHistogram empties minute m's histogram for it, after keeping the
// p99 of the minute it held in that minute's slot.
func (t *Timeline) claimHistogram(m int64) {
	h := &t.latency[m&1]
	held := h.at.Load()
	if held >= m {
		return
	}
	if held != math.MinInt64 {
		if s := &t.minutes[slotOf(held)]; s.at.Load() == held {
			s.p99.Store(uint32(h.quantile(0.99) / time.Microsecond))
		}
	}
	for i := range h.counts {
		h.counts[i].Store(0)
	}
	h.at.Store(m)
}

// call counts a call that ended at now after latency.
func (t *Timeline) call(now time.Time, latency time.Duration, failed bool) {
	m := unixMinute(now)
	b := t.at(m)
	if b == nil {
		return
	}
	b.calls.Add(1)
	if failed {
		b.failures.Add(1)
	}
	if s := t.slowAfter.Load(); s > 0 && int64(latency) > s {
		b.slow.Add(1)
	}
	if h := &t.latency[m&1]; h.at.Load() == m {
		h.counts[latencyIndex(latency)].Add(1)
	}
}

// reject counts a call refused at now.
func (t *Timeline) reject(now time.Time) {
	if b := t.at(unixMinute(now)); b != nil {
		b.rejections.Add(1)
	}
}

// transition records that the breaker entered state to at now. The
// breaker's lock is held: transitions come in order.
func (t *Timeline) transition(now time.Time, to State) {
	if b := t.at(unixMinute(now)); b != nil {
		b.states.Or(1 << uint32(to))
	}
	t.current.Store(uint32(to))
}

// Points returns the timeline's minutes from the last TimelineMinutes up
// to now's, oldest first, none older than the timeline's start. A minute
// without records is a zero point in the state the breaker had then.
func (t *Timeline) Points(now time.Time) []TimelinePoint {
	last := unixMinute(now)
	from := max(t.first, last-TimelineMinutes+1)
	if from > last {
		return nil
	}
	points := make([]TimelinePoint, last-from+1)
	// Backwards: a minute without records is spent in the state the next
	// recorded one started in.
	carried := State(t.current.Load())
	for m := last; m >= from; m-- {
		p := &points[m-from]
		p.Time = time.Unix(m*60, 0)
		b := &t.minutes[slotOf(m)]
		if b.at.Load() != m {
			p.State = carried
			continue
		}
		states := b.states.Load()
		p.State = worstState(states)
		carried = State(states >> startShift & 3)
		p.Calls, p.Failures, p.Rejections, p.Slow = b.calls.Load(), b.failures.Load(), b.rejections.Load(), b.slow.Load()
		if h := &t.latency[m&1]; h.at.Load() == m {
			p.P99 = h.quantile(0.99)
		} else {
			p.P99 = time.Duration(b.p99.Load()) * time.Microsecond
		}
	}
	return points
}

func worstState(states uint32) State {
	switch {
	case states&(1<<StateOpen) != 0:
		return StateOpen
	case states&(1<<StateHalfOpen) != 0:
		return StateHalfOpen
	}
	return StateClosed
}

// latencyIndex is the histogram bucket of d.
func latencyIndex(d time.Duration) int {
	us := uint64(max(d, 0) / time.Microsecond)
	if us < 1<<latencyMinExp {
		return 0
	}
	e := bits.Len64(us) - 1
	if e >= latencyMaxExp {
		return latencyOverflow
	}
	half := int(us>>(e-1)) & 1 // the bit below the leading one: [1.5, 2)
	return 1 + 2*(e-latencyMinExp) + half
}

// latencyBounds are bucket i's bounds in microseconds; the overflow
// bucket's upper bound is its lower one.
func latencyBounds(i int) (lo, hi float64) {
	switch i {
	case 0:
		return 0, 1 << latencyMinExp
	case latencyOverflow:
		return 1 << latencyMaxExp, 1 << latencyMaxExp
	}
	e := latencyMinExp + (i-1)/2
	octave := math.Ldexp(1, e)
	if (i-1)%2 == 0 {
		return octave, 1.5 * octave
	}
	return 1.5 * octave, 2 * octave
}

// quantile is the q-quantile of the histogram's values: the midpoint of
// the bucket it falls in (0 without values).
func (h *histogram) quantile(q float64) time.Duration {
	var counts [latencyBuckets]uint32
	var total uint64
	for i := range counts {
		counts[i] = h.counts[i].Load()
		total += uint64(counts[i])
	}
	if total == 0 {
		return 0
	}
	// The rank of the quantile, from 1: the 99th percentile of 100 values
	// is the 99th smallest.
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, c := range counts {
		if seen += uint64(c); seen >= rank {
			lo, hi := latencyBounds(i)
			return time.Duration((lo + hi) / 2 * float64(time.Microsecond))
		}
	}
	return 0
}

// Timeline returns the breaker's timeline; nil until its first call or
// rejection.
func (b *Breaker) Timeline() *Timeline { return b.timeline.Load() }

// RecordCall puts a call that ended now with a verdict, failed or not,
// after latency (the proxy times it to the verdict) on the breaker's timeline,
// which the first call starts. It takes no lock but on the first call of a
// minute, and allocates nothing but the timeline itself.
func (b *Breaker) RecordCall(latency time.Duration, failed bool) {
	t := b.timeline.Load()
	if t == nil {
		t = b.startTimeline()
	}
	t.call(b.clock.Now(), latency, failed)
}

func (b *Breaker) startTimeline() *Timeline {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.startTimelineLocked()
}

// startTimelineLocked returns the timeline, started now in the current
// state if it was not yet.
func (b *Breaker) startTimelineLocked() *Timeline {
	if t := b.timeline.Load(); t != nil {
		return t
	}
	t := newTimeline(b.clock, b.state, b.settings.SlowCallDuration)
	b.timeline.Store(t)
	return t
}

// rejectLocked counts a rejected call at now, on the counts and the
// timeline.
func (b *Breaker) rejectLocked(now time.Time) {
	b.rejected++
	b.startTimelineLocked().reject(now)
}
