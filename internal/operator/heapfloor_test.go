package operator

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
)

func TestGCPercentFor(t *testing.T) {
	const MiB = 1 << 20
	for _, tc := range []struct {
		name        string
		live, floor uint64
		base, want  int
	}{
		{"a live heap whose goal is above the floor keeps GOGC", 20 * MiB, 32 * MiB, 100, 100},
		{"a goal exactly at the floor keeps GOGC", 16 * MiB, 32 * MiB, 100, 100},
		{"a small live heap grows to the floor", 8 * MiB, 32 * MiB, 100, 300},
		{"a replica with a handful of breakers", 6 * MiB, 32 * MiB, 100, 433},
		{"a tiny live heap is capped", 1 * MiB, 32 * MiB, 100, maxGCPercent},
		{"a GOGC of the user's that reaches the floor is kept", 8 * MiB, 32 * MiB, 400, 400},
		{"a GOGC of the user's below the floor's is raised", 8 * MiB, 32 * MiB, 50, 300},
		{"a GOGC of the user's above the cap is never lowered", 1 * MiB, 32 * MiB, 2000, 2000},
		{"a live heap above the floor", 40 * MiB, 32 * MiB, 100, 100},
		{"a large fleet: the floor does not bind", 68 * MiB, 32 * MiB, 100, 100},
		{"GOGC=off is left alone", 8 * MiB, 32 * MiB, -1, -1},
		{"no live heap read yet", 0, 32 * MiB, 100, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(gcPercentFor(tc.live, tc.floor, tc.base)).To(Equal(tc.want))
		})
	}
}

func TestHeapFloorFor(t *testing.T) {
	g := NewWithT(t)
	g.Expect(HeapFloorFor(0)).To(Equal(uint64(HeapFloor)), "no limit")
	g.Expect(HeapFloorFor(256<<20)).To(Equal(uint64(HeapFloor)), "the install's limit")
	g.Expect(HeapFloorFor(64<<20)).To(Equal(uint64(8<<20)), "a small limit: an eighth of it")
}

// gcPercent is the process's GC percent as the runtime reports it.
func gcPercent() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestHeapFloorFollowsEachCollection runs the floor in this test process:
// after a collection the GC percent is the floor's; once the floor is
// stopped it is the process's own again, and the cleanup armed before the
// stop runs without setting anything or arming another.
func TestHeapFloorFollowsEachCollection(t *testing.T) {
	g := NewWithT(t)
	base := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(base) })

	f := newHeapFloor(1 << 30) // far above this process's heap
	g.Expect(f).NotTo(BeNil())
	f.arm()
	g.Eventually(func() uint64 {
		runtime.GC()
		return gcPercent()
	}).Should(Equal(uint64(maxGCPercent)), "a collection sets the floor's GC percent")

	f.stop()
	g.Expect(gcPercent()).To(Equal(uint64(100)), "stopped: the process's own GC percent")
	// Every armed cleanup runs once, and a run counts itself after arming
	// the next: when the runs reach the arms counted at the stop, the one
	// armed last has run, after the stop.
	arms := f.arms.Load()
	g.Eventually(func() int64 {
		runtime.GC()
		return f.tunes.Load()
	}).Should(Equal(arms), "the cleanup armed before the stop runs")
	g.Expect(f.arms.Load()).To(Equal(arms), "and arms no other")
	g.Expect(gcPercent()).To(Equal(uint64(100)), "nor sets the floor's GC percent again")
}

func TestKeepHeapFloorPutsGOGCBack(t *testing.T) {
	g := NewWithT(t)
	base := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(base) })
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		keepHeapFloor(ctx, 1<<30, logr.Discard())
	}()
	g.Eventually(func() uint64 {
		runtime.GC()
		return gcPercent()
	}).Should(Equal(uint64(maxGCPercent)))
	cancel()
	<-stopped
	g.Expect(gcPercent()).To(Equal(uint64(100)))

	debug.SetGCPercent(-1)
	g.Expect(newHeapFloor(1<<30)).To(BeNil(), "GOGC=off is left alone")
}
