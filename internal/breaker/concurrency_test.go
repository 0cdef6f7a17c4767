package breaker

import (
	"fmt"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestHalfOpenAdmissionUnderConcurrentCallers(t *testing.T) {
	for _, limit := range []uint32{1, 3, 10} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			g := NewWithT(t)
			b, clk, _ := newTestBreaker(Settings{FailureThreshold: 1, HalfOpenMaxRequests: limit, SuccessThreshold: 1000})
			openAndWait(g, b, clk)

			const callers = 64
			var (
				wg       sync.WaitGroup
				mu       sync.Mutex
				admitted []Ticket
				rejected int
			)
			start := make(chan struct{})
			for range callers {
				wg.Go(func() {
					<-start
					tk, err := b.Allow()
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						g.Expect(err).To(MatchError(ErrProbeLimit))
						rejected++
						return
					}
					admitted = append(admitted, tk)
				})
			}
			close(start)
			wg.Wait()
			g.Expect(admitted).To(HaveLen(int(limit)))
			g.Expect(rejected).To(Equal(callers - int(limit)))
		})
	}
}

func TestConcurrentTrafficIsConsistent(t *testing.T) {
	g := NewWithT(t)
	b, clk, rec := newTestBreaker(Settings{FailureThreshold: 50, RecoveryTimeout: time.Second, HalfOpenMaxRequests: 4})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				tk, err := b.Allow()
				if err != nil {
					continue
				}
				if (i+w)%3 == 0 {
					tk.Failure(http503)
				} else {
					tk.Success()
				}
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			clk.Step(500 * time.Millisecond)
			b.Snapshot()
		}
	})
	wg.Wait()
	// Every transition starts where the previous one ended.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	state := StateClosed
	for _, tr := range rec.transitions {
		g.Expect(tr.From).To(Equal(state))
		state = tr.To
	}
	g.Expect(b.Snapshot().State).To(Equal(state))
}
