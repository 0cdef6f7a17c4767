package operator

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
)

// HeapFloor is the heap the collector may let grow before a cycle, at
// least, in a replica with a small live heap, unless the memory limit is
// small (HeapFloorFor).
//
// Why: the proxy's calls allocate (net/http's HTTP/2 server and client
// alone, about 13 KiB a gRPC call), and each collection marks the whole
// live heap, which in a replica includes the controller's caches, the API
// scheme and the clients: 6 MiB with a handful of breakers, against 2 to 3
// MiB in a bare reverse proxy. With GOGC=100 the replica then spent 8.6 µs
// of CPU a gRPC call collecting, a bare httputil.ReverseProxy 4.2 µs
// (docs/benchmarks.md, "gRPC through the proxy"). With a floor of 32 MiB
// its cycles were about five times rarer a call and cost 1.5 µs a call.
// From half the floor of live heap up (16 MiB with GOGC=100: a few
// thousand breakers) the floor no longer binds and GOGC paces the heap as
// usual, so the RSS of a large fleet is unchanged. GOMEMLIMIT still bounds
// the heap from above. The idea is bytedance/gopkg's gctuner (after
// Uber's GOGC tuning), used here only as a floor, never to collect less
// at a large live heap.
const HeapFloor = 32 << 20

// maxGCPercent bounds the GC percent the floor sets (a live heap under 3
// MiB then grows to 11 times its size, less than the floor); a GOGC of the
// user's above it is kept.
const maxGCPercent = 1000

// HeapFloorFor is the floor for a process whose memory limit is limit
// bytes (0: none): HeapFloor, or an eighth of the limit where that is
// less, so that a small limit keeps its room for the live heap.
func HeapFloorFor(limit int64) uint64 {
	if limit > 0 && limit/8 < HeapFloor {
		return uint64(limit / 8)
	}
	return HeapFloor
}

// gcPercentFor is the GC percent that keeps the heap goal of a live heap
// of live bytes at floor or above: base (the process's GOGC) when base
// already does, more when it does not, at most maxGCPercent.
func gcPercentFor(live, floor uint64, base int) int {
	if base < 0 || base >= maxGCPercent || live == 0 || live >= floor || live+live*uint64(base)/100 >= floor {
		return base
	}
	return max(base, int(min((floor-live)*100/live, maxGCPercent)))
}

// keepHeapFloor sets the GC percent after every collection from the live
// heap it found (gcPercentFor), until ctx is done; then it puts the
// process's own GC percent back. GOGC=off is left alone.
func keepHeapFloor(ctx context.Context, floor uint64, log logr.Logger) {
	f := newHeapFloor(floor)
	if f == nil {
		return // GOGC=off: the memory limit paces the collector alone
	}
	log.Info("the collector's heap goal has a floor while the live heap is small", "floorMiB", floor>>20, "gcPercent", f.base)
	f.arm()
	<-ctx.Done()
	f.stop()
}

// heapFloor is keepHeapFloor's state between collections, which the
// runtime's cleanup goroutine (tune) and stop share under mu.
type heapFloor struct {
	floor   uint64
	base    int
	mu      sync.Mutex
	stopped bool
	set     int
	samples []metrics.Sample
	// arms and tunes count the cleanups armed and run, for the tests.
	arms, tunes atomic.Int64
}

// newHeapFloor is a floor, nil under GOGC=off.
func newHeapFloor(floor uint64) *heapFloor {
	samples := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/heap/live:bytes"}}
	metrics.Read(samples)
	if samples[0].Value.Kind() != metrics.KindUint64 {
		return nil
	}
	// GOGC=off reads as -1 in the metric's unsigned value.
	base := int(int64(samples[0].Value.Uint64()))
	if base <= 0 {
		return nil
	}
	return &heapFloor{floor: floor, base: base, set: base, samples: samples}
}

// sentinel is allocated anew after each collection; its cleanup runs once
// the next collection has found it unreachable. It holds a pointer so that
// it is not a tiny allocation, which the runtime may keep alive with its
// neighbours.
type sentinel struct{ _ *heapFloor }

// arm sets tune to run after the next collection.
func (f *heapFloor) arm() {
	f.arms.Add(1)
	runtime.AddCleanup(&sentinel{}, (*heapFloor).tune, f)
}

// tune sets the GC percent for the live heap the last collection found,
// and arms itself for the next, unless the floor has stopped.
func (f *heapFloor) tune() {
	defer f.tunes.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return
	}
	metrics.Read(f.samples)
	if want := gcPercentFor(f.samples[1].Value.Uint64(), f.floor, f.base); want != f.set {
		debug.SetGCPercent(want)
		f.set = want
	}
	f.arm()
}

// stop puts the process's own GC percent back; a cleanup armed before it
// then runs without setting anything or arming another.
func (f *heapFloor) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	debug.SetGCPercent(f.base)
}
