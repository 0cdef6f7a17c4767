package operator

import (
	"context"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/go-logr/logr"
)

// startSettled is how often returnStartMemory looks whether the start is
// over, and startSettleBound how long it looks at most.
const (
	startSettled     = time.Second
	startSettleBound = 10 * time.Minute
)

// returnStartMemory returns the start's garbage to the operating system
// once the replica is ready and its work queue has drained (the first
// status writes are done: empty at two looks a second apart). Listing
// 10,000 breakers with their Services and EndpointSlices decodes each
// object whole before the cache trims it, and the first writes copy every
// status: that leaves the heap mapped at about twice the live heap, which
// the runtime's scavenger gives back only over minutes (docs/benchmarks.md,
// bench-scale). One forced collection, once, at the end of the start,
// returns it at once; from then on the collector paces the heap as usual
// (GOMEMLIMIT bounds it). Ready is the readiness probe's verdict: where
// nothing probes, the start never counts as settled, and the bound ends
// the wait.
func returnStartMemory(ctx context.Context, ready func() bool, queued func() int, log logr.Logger) {
	tick := time.NewTicker(startSettled)
	defer tick.Stop()
	bound := time.After(startSettleBound)
	// The queue is empty while its last items are still being reconciled
	// (it counts only what waits): settled is empty at two looks in a row.
	drained := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-bound:
			return // never settled (an API server away): the scavenger will do
		case <-tick.C:
		}
		if !ready() || queued() > 0 {
			drained = 0
			continue
		}
		if drained++; drained < 2 {
			continue
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		debug.FreeOSMemory()
		runtime.ReadMemStats(&after)
		// In use beyond the live heap: spans that still hold a live object
		// among the start's garbage, which no collection gives back.
		log.Info("start settled: returned its garbage to the operating system",
			"liveHeapMiB", after.HeapAlloc>>20, "heapInUseMiB", after.HeapInuse>>20, "releasedMiB", (after.HeapReleased-before.HeapReleased)>>20)
		return
	}
}
