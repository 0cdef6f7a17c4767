package breaker

import (
	"runtime"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

// proxyCall does what the proxy does for one call: permission, verdict,
// and the call on the timeline (a rejection puts itself there).
func proxyCall(b *Breaker, latency time.Duration, failed bool) {
	t, err := b.Allow()
	if err != nil {
		return
	}
	if failed {
		t.Failure(http503)
	} else {
		t.Success()
	}
	b.RecordCall(latency, failed)
}

// pt is a timeline point without its time and p99, for comparisons.
type pt struct {
	calls, failures, rejections, slow uint32
	state                             State
}

func pts(points []TimelinePoint) []pt {
	out := make([]pt, len(points))
	for i, p := range points {
		out[i] = pt{p.Calls, p.Failures, p.Rejections, p.Slow, p.State}
	}
	return out
}

func TestTimelineStartsWithTraffic(t *testing.T) {
	g := NewWithT(t)
	b, _, _ := newTestBreaker(Settings{FailureThreshold: 1, RecoveryTimeout: time.Hour})
	b.Update(Settings{FailureThreshold: 1, RecoveryTimeout: 2 * time.Hour})
	b.Snapshot()
	g.Expect(b.Timeline()).To(BeNil(), "no traffic, no timeline")
	tk, err := b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
	tk.Success()
	g.Expect(b.Timeline()).To(BeNil(), "a permission alone is no call on the timeline (the proxy records calls)")

	b.RecordCall(time.Millisecond, false)
	g.Expect(b.Timeline()).NotTo(BeNil())

	rejected, _, _ := newTestBreaker(Settings{Mode: ModeForcedOpen})
	_, err = rejected.Allow()
	g.Expect(err).To(MatchError(ErrForcedOpen))
	g.Expect(rejected.Timeline()).NotTo(BeNil(), "a rejection is traffic too")
	g.Expect(pts(rejected.Timeline().Points(epoch))).To(Equal([]pt{{rejections: 1, state: StateOpen}}))
}

func TestTimelinePoints(t *testing.T) {
	settings := Settings{FailureThreshold: 2, RecoveryTimeout: 90 * time.Second, SlowCallDuration: time.Second}
	ok := func(b *Breaker, n int) {
		for range n {
			proxyCall(b, 10*time.Millisecond, false)
		}
	}
	cases := []struct {
		name string
		// drive runs from epoch (17:00:00) and leaves the clock at now.
		drive func(b *Breaker, clk *clocktesting.FakeClock)
		want  []pt
		// wantFirst is the first point's time, from epoch.
		wantFirst time.Duration
	}{{
		name:  "calls within one minute are one point",
		drive: func(b *Breaker, clk *clocktesting.FakeClock) { ok(b, 3); clk.Step(59 * time.Second); ok(b, 2) },
		want:  []pt{{calls: 5}},
	}, {
		name: "a new minute is a new point (rollover), started mid-minute",
		drive: func(b *Breaker, clk *clocktesting.FakeClock) {
			clk.Step(30 * time.Second)
			ok(b, 3)
			clk.Step(30 * time.Second) // 17:01:00
			ok(b, 1)
		},
		want: []pt{{calls: 3}, {calls: 1}},
	}, {
		name: "minutes without traffic are zero points",
		drive: func(b *Breaker, clk *clocktesting.FakeClock) {
			ok(b, 1)
			clk.Step(3 * time.Minute)
			ok(b, 2)
			clk.Step(2 * time.Minute) // now 17:05, nothing since 17:03
		},
		want: []pt{{calls: 1}, {}, {}, {calls: 2}, {}, {}},
	}, {
		name: "failures, slow calls and rejections; the minute that opened is open, and so are the quiet ones after",
		drive: func(b *Breaker, clk *clocktesting.FakeClock) {
			ok(b, 2)
			proxyCall(b, 2*time.Second, false) // slow
			clk.Step(time.Minute)
			proxyCall(b, time.Millisecond, true)
			proxyCall(b, time.Millisecond, true) // opens
			proxyCall(b, 0, false)               // rejected
			clk.Step(time.Minute)
			proxyCall(b, 0, false) // rejected
			clk.Step(time.Minute)  // 17:03: no call yet, still open
		},
		want: []pt{{calls: 3, slow: 1}, {calls: 2, failures: 2, rejections: 1, state: StateOpen},
			{rejections: 1, state: StateOpen}, {state: StateOpen}},
	}, {
		name: "the worst state of the minute: open, half-open, closed in one minute is open; half-open then closed is half-open",
		drive: func(b *Breaker, clk *clocktesting.FakeClock) {
			proxyCall(b, time.Millisecond, true)
			proxyCall(b, time.Millisecond, true) // opens at 17:00:00
			clk.Step(4 * time.Minute)            // 17:04:00: quiet minutes, open
			proxyCall(b, time.Millisecond, true) // a probe that fails: half-open, open again
			clk.Step(2 * time.Minute)            // 17:06:00: the minute starts open
			probe, _ := b.Allow()                // half-open
			clk.Step(time.Minute)                // 17:07:00: the minute starts half-open
			probe.Success()                      // closes
			b.RecordCall(time.Millisecond, false)
			ok(b, 1)
		},
		want: []pt{{calls: 2, failures: 2, state: StateOpen}, {state: StateOpen}, {state: StateOpen}, {state: StateOpen},
			{calls: 1, failures: 1, state: StateOpen}, {state: StateOpen}, {state: StateOpen}, {calls: 2, state: StateHalfOpen}},
	}, {
		name: "a reset closes the quiet minutes after it",
		drive: func(b *Breaker, clk *clocktesting.FakeClock) {
			proxyCall(b, time.Millisecond, true)
			proxyCall(b, time.Millisecond, true)
			clk.Step(2 * time.Minute)
			b.Reset("r1", "reset")
			clk.Step(2 * time.Minute)
		},
		want: []pt{{calls: 2, failures: 2, state: StateOpen}, {state: StateOpen}, {state: StateOpen}, {}, {}},
	}, {
		name: "an hour wraps the ring: the last 60 minutes, the reused slots counted afresh",
		drive: func(b *Breaker, clk *clocktesting.FakeClock) {
			for range 90 { // 17:00 to 18:29, one call more each minute
				ok(b, 1)
				clk.Step(time.Minute)
			}
			clk.Step(-time.Minute) // 18:29
			ok(b, 4)
		},
		wantFirst: 30 * time.Minute,
		want: func() []pt {
			w := make([]pt, 60)
			for i := range w {
				w[i] = pt{calls: 1}
			}
			w[59].calls = 5
			return w
		}(),
	}, {
		name: "after an hour without traffic, an hour of zero points in the state kept",
		drive: func(b *Breaker, clk *clocktesting.FakeClock) {
			ok(b, 7)
			clk.Step(3 * time.Hour)
		},
		wantFirst: 2*time.Hour + time.Minute,
		want:      make([]pt, 60),
	}}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			b, clk, _ := newTestBreaker(settings)
			tt.drive(b, clk)
			points := b.Timeline().Points(clk.Now())
			g.Expect(pts(points)).To(Equal(tt.want))
			g.Expect(points[0].Time).To(BeTemporally("==", epoch.Add(tt.wantFirst)))
			for i := range points[1:] {
				g.Expect(points[i+1].Time.Sub(points[i].Time)).To(Equal(time.Minute))
			}
		})
	}
}

func TestTimelineP99(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name      string
		latencies map[time.Duration]int
		want      time.Duration
	}{
		{"all alike", map[time.Duration]int{10 * ms: 100}, 10 * ms},
		{"one slow call in 100 is above the 99th", map[time.Duration]int{ms: 99, time.Second: 1}, ms},
		{"two slow calls in 100 are the 99th", map[time.Duration]int{ms: 98, 500 * ms: 2}, 500 * ms},
		{"a 1.5 boundary", map[time.Duration]int{1536 * time.Microsecond: 10}, 1536 * time.Microsecond},
		{"just under an octave", map[time.Duration]int{4095 * time.Microsecond: 10}, 4095 * time.Microsecond},
		{"seconds", map[time.Duration]int{20 * ms: 900, 7 * time.Second: 100}, 7 * time.Second},
		{"beyond the last octave", map[time.Duration]int{time.Minute: 3}, 1 << latencyMaxExp * time.Microsecond},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			b, clk, _ := newTestBreaker(Settings{})
			for d, n := range tt.latencies {
				for range n {
					b.RecordCall(d, false)
				}
			}
			p99 := b.Timeline().Points(clk.Now())[0].P99
			g.Expect(float64(p99)).To(BeNumerically("~", float64(tt.want), 0.2*float64(tt.want)), "p99 %v, want %v", p99, tt.want)
			lo, hi := latencyBounds(latencyIndex(tt.want))
			g.Expect(p99).To(SatisfyAll(
				BeNumerically(">=", time.Duration(lo*float64(time.Microsecond))),
				BeNumerically("<=", time.Duration(hi*float64(time.Microsecond)))), "in the bucket of %v", tt.want)
		})
	}
	g := NewWithT(t)
	b, clk, _ := newTestBreaker(Settings{})
	b.RecordCall(20*time.Microsecond, false)
	g.Expect(b.Timeline().Points(clk.Now())[0].P99).To(Equal(32*time.Microsecond), "below 64 µs: the first bucket's midpoint")
}

// Two histograms serve the ring: an older minute keeps its p99 as it was
// when its histogram moved on, gaps and all.
func TestTimelineP99KeptPastTheHistogram(t *testing.T) {
	g := NewWithT(t)
	b, clk, _ := newTestBreaker(Settings{})
	perMinute := []time.Duration{10 * time.Millisecond, time.Second, 0, 3 * time.Millisecond, 0, 0, 200 * time.Millisecond}
	for _, d := range perMinute {
		if d > 0 {
			for range 10 {
				b.RecordCall(d, false)
			}
		}
		clk.Step(time.Minute)
	}
	b.RecordCall(time.Microsecond, false) // 17:07
	points := b.Timeline().Points(clk.Now())
	g.Expect(points).To(HaveLen(len(perMinute) + 1))
	for i, d := range perMinute {
		g.Expect(float64(points[i].P99)).To(BeNumerically("~", float64(d), 0.2*float64(d)), "minute %d", i)
	}
	g.Expect(points[7].P99).To(Equal(32 * time.Microsecond))
}

func TestLatencyBucketsCoverTheRange(t *testing.T) {
	g := NewWithT(t)
	prevHi := 0.0
	for i := range latencyBuckets - 1 {
		lo, hi := latencyBounds(i)
		g.Expect(lo).To(Equal(prevHi), "bucket %d starts where %d ended", i, i-1)
		g.Expect(hi).To(BeNumerically(">", lo))
		for _, us := range []float64{lo, (lo + hi) / 2, hi - 1} {
			g.Expect(latencyIndex(time.Duration(us)*time.Microsecond)).To(Equal(i), "%v µs", us)
		}
		if i > 0 {
			g.Expect((hi-lo)/2/((lo+hi)/2)).To(BeNumerically("<=", 0.2), "the midpoint is within 20%% of bucket %d", i)
		}
		prevHi = hi
	}
	g.Expect(latencyIndex(time.Duration(prevHi) * time.Microsecond)).To(Equal(latencyOverflow))
	g.Expect(latencyIndex(-time.Second)).To(Equal(0))
}

func TestTimelineSlowFollowsTheSettings(t *testing.T) {
	g := NewWithT(t)
	b, clk, _ := newTestBreaker(Settings{})
	b.RecordCall(time.Hour, false)
	b.Update(Settings{SlowCallDuration: time.Second, SlowCallRateThreshold: 50, Window: time.Minute})
	b.RecordCall(2*time.Second, false)
	b.RecordCall(time.Second, false)
	g.Expect(pts(b.Timeline().Points(clk.Now()))).To(Equal([]pt{{calls: 3, slow: 1}}), "no rule, no slow calls; then slower than 1s")
}

func TestTimelineConcurrentRecords(t *testing.T) {
	g := NewWithT(t)
	b, clk, _ := newTestBreaker(Settings{FailureThreshold: 1 << 20})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				proxyCall(b, time.Duration(i)*time.Microsecond, w == 0)
				if i%100 == 0 {
					b.Timeline().Points(clk.Now())
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 50 {
			b.Reset(string(rune('a'+i)), "reset")
		}
	})
	wg.Wait()
	g.Expect(pts(b.Timeline().Points(clk.Now()))).To(Equal([]pt{{calls: 8000, failures: 1000}}))
}

func TestRecordCallAllocatesNothing(t *testing.T) {
	g := NewWithT(t)
	b, clk, _ := newTestBreaker(Settings{})
	b.RecordCall(time.Millisecond, false) // starts the timeline
	allocs := testing.AllocsPerRun(1000, func() {
		b.RecordCall(time.Millisecond, false)
		clk.Step(time.Second) // a new minute every 60 runs: claims allocate nothing either
	})
	g.Expect(allocs).To(BeZero())
}

// BenchmarkTimelineRecord is one call put on the timeline of a breaker
// with traffic (the proxy does it once per call).
func BenchmarkTimelineRecord(b *testing.B) {
	br := New(Settings{}, clock.RealClock{}, Options{})
	br.RecordCall(time.Millisecond, false)
	b.ReportAllocs()
	for b.Loop() {
		br.RecordCall(time.Millisecond, false)
	}
}

// BenchmarkTimelineMemory reports what a timeline costs a breaker: the
// heap of b.N breakers that each saw one call, less that of b.N without
// traffic. Run with a count of breakers, e.g.
//
//	go test -run '^$' -bench TimelineMemory -benchtime 1000x ./internal/breaker
func BenchmarkTimelineMemory(b *testing.B) {
	clk := clocktesting.NewFakeClock(epoch)
	breakers := make([]*Breaker, b.N)
	for i := range breakers {
		breakers[i] = New(Settings{}, clk, Options{})
	}
	before := heapInUse()
	for _, br := range breakers {
		br.RecordCall(time.Millisecond, false)
	}
	after := heapInUse()
	b.ReportMetric(float64(after-before)/float64(b.N), "bytes/breaker")
	runtime.KeepAlive(breakers)
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
