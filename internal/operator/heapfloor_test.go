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
// after a collection the GC percent is the floor's, and once the floor is
// stopped the process's own again, also after the collection that runs
// the cleanup armed before the stop.
func TestHeapFloorFollowsEachCollection(t *testing.T) {
	g := NewWithT(t)
	base := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(base) })

	done := make(chan struct{})
	f := newHeapFloor(1<<30, done) // far above this process's heap
	g.Expect(f).NotTo(BeNil())
	f.arm()
	g.Eventually(func() uint64 {
		runtime.GC()
		return gcPercent()
	}).Should(Equal(uint64(maxGCPercent)), "a collection sets the floor's GC percent")

	close(done)
	tunes := f.tunes.Load()
	g.Eventually(func() int64 {
		runtime.GC()
		return f.tunes.Load()
	}).Should(BeNumerically(">", tunes), "the cleanup armed before the stop runs")
	g.Expect(gcPercent()).To(Equal(uint64(100)), "stopped: the process's own GC percent")
	tunes = f.tunes.Load()
	runtime.GC()
	runtime.GC()
	g.Expect(f.tunes.Load()).To(Equal(tunes), "a stopped floor arms no more cleanups")
	g.Expect(gcPercent()).To(Equal(uint64(100)))
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
	g.Expect(newHeapFloor(1<<30, nil)).To(BeNil(), "GOGC=off is left alone")
}
