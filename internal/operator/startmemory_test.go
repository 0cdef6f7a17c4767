package operator

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
)

// The start's garbage is returned once, when the replica is ready and its
// queue has drained, not before; and never after the manager stops.
func TestReturnStartMemoryWaitsForTheStartToSettle(t *testing.T) {
	t.Run("ready, then drained", func(t *testing.T) {
		g := NewWithT(t)
		var readyLooks, queueLooks atomic.Int32
		queue := []int{300, 0, 1, 0, 0}
		done := make(chan struct{})
		go func() {
			defer close(done)
			returnStartMemory(context.Background(), func() bool { return readyLooks.Add(1) > 1 }, // not ready at first
				func() int { return queue[min(int(queueLooks.Add(1))-1, len(queue)-1)] }, logr.Discard())
		}()
		g.Eventually(done).WithTimeout(startSettleBound).Should(BeClosed())
		g.Expect(readyLooks.Load()).To(Equal(int32(6)), "not ready, then ready five times")
		g.Expect(queueLooks.Load()).To(Equal(int32(5)), "looked at the queue only once ready, until it was empty twice in a row")
	})
	t.Run("the manager stops first", func(t *testing.T) {
		g := NewWithT(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			returnStartMemory(ctx, func() bool { return false }, func() int { return 0 }, logr.Discard())
		}()
		cancel()
		g.Eventually(done).Should(BeClosed())
	})
}
