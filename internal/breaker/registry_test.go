package breaker

import (
	"context"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	clocktesting "k8s.io/utils/clock/testing"
)

type registryEvents struct {
	mu          sync.Mutex
	transitions map[Key][]Transition
	counts      []Key
}

func newTestRegistry() (*Registry, *clocktesting.FakeClock, *registryEvents) {
	clk := clocktesting.NewFakeClock(epoch)
	ev := &registryEvents{transitions: map[Key][]Transition{}}
	r := NewRegistry(clk)
	r.OnTransition(func(k Key, t Transition) {
		ev.mu.Lock()
		ev.transitions[k] = append(ev.transitions[k], t)
		ev.mu.Unlock()
	})
	r.OnCountsChanged(func(k Key) { ev.mu.Lock(); ev.counts = append(ev.counts, k); ev.mu.Unlock() })
	return r, clk, ev
}

func TestKey(t *testing.T) {
	g := NewWithT(t)
	k := NewKey("shop", "order-api")
	g.Expect(string(k)).To(Equal("shop/order-api"))
	ns, name := k.Split()
	g.Expect(ns).To(Equal("shop"))
	g.Expect(name).To(Equal("order-api"))
}

func TestRegistryUpsertGetDelete(t *testing.T) {
	g := NewWithT(t)
	r, _, ev := newTestRegistry()
	key := NewKey("shop", "order-api")

	_, ok := r.Get(key)
	g.Expect(ok).To(BeFalse())

	b, created := r.Upsert(key, "uid-1", Settings{FailureThreshold: 3}, nil)
	g.Expect(created).To(BeTrue())
	got, ok := r.Get(key)
	g.Expect(ok).To(BeTrue())
	g.Expect(got).To(BeIdenticalTo(b))

	fail(g, b, 2)
	again, created := r.Upsert(key, "uid-1", Settings{FailureThreshold: 4}, &Snapshot{State: StateOpen})
	g.Expect(created).To(BeFalse())
	g.Expect(again).To(BeIdenticalTo(b), "an update keeps the live breaker")
	g.Expect(b.Snapshot().Failures).To(Equal(uint32(2)), "and its counts; saved state is only for new breakers")
	g.Expect(b.Snapshot().Settings.FailureThreshold).To(Equal(uint32(4)))

	fail(g, b, 2)
	g.Expect(ev.transitions[key]).To(HaveLen(1))
	g.Expect(ev.transitions[key][0].To).To(Equal(StateOpen))

	r.Upsert(NewKey("shop", "billing"), "uid-1", Settings{}, nil)
	g.Expect(r.Keys()).To(Equal([]Key{"shop/billing", "shop/order-api"}))

	r.Delete(key)
	_, ok = r.Get(key)
	g.Expect(ok).To(BeFalse())
	r.Delete(key) // deleting twice is harmless
	g.Expect(r.Keys()).To(Equal([]Key{"shop/billing"}))
}

func TestRegistryRestore(t *testing.T) {
	tests := []struct {
		name      string
		saved     Snapshot
		advance   time.Duration
		wantAllow error
		wantState State
	}{
		{
			name:      "open stays open until openUntil",
			saved:     Snapshot{State: StateOpen, LastTransitionTime: epoch.Add(-20 * time.Second), OpenUntil: epoch.Add(10 * time.Second)},
			advance:   9 * time.Second,
			wantAllow: ErrOpen,
			wantState: StateOpen,
		},
		{
			name:      "open probes once openUntil has passed",
			saved:     Snapshot{State: StateOpen, LastTransitionTime: epoch.Add(-20 * time.Second), OpenUntil: epoch.Add(10 * time.Second)},
			advance:   10 * time.Second,
			wantState: StateHalfOpen,
		},
		{
			name:      "open without openUntil uses the recovery timeout from its transition",
			saved:     Snapshot{State: StateOpen, LastTransitionTime: epoch.Add(-25 * time.Second)},
			advance:   4 * time.Second,
			wantAllow: ErrOpen,
			wantState: StateOpen,
		},
		{
			name:      "a forged openUntil years ahead lasts no longer than the settings allow",
			saved:     Snapshot{State: StateOpen, LastTransitionTime: epoch.Add(-time.Second), OpenUntil: epoch.AddDate(10, 0, 0)},
			advance:   30 * time.Second, // the recovery timeout, and a second of the status's rounding
			wantState: StateHalfOpen,
		},
		{
			name:      "a transition from the future happened now",
			saved:     Snapshot{State: StateOpen, LastTransitionTime: epoch.AddDate(1, 0, 0), OpenUntil: epoch.AddDate(1, 0, 0).Add(30 * time.Second)},
			advance:   31 * time.Second,
			wantState: StateHalfOpen,
		},
		{
			name:      "closed keeps its failures and its last reset",
			saved:     Snapshot{State: StateClosed, Failures: 4, LastResetID: "r1"},
			wantState: StateClosed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			r, clk, _ := newTestRegistry()
			b, created := r.Upsert(NewKey("shop", "a"), "uid-1", Settings{RecoveryTimeout: 30 * time.Second}, &tt.saved)
			g.Expect(created).To(BeTrue())
			clk.Step(tt.advance)
			tk, err := b.Allow()
			if tt.wantAllow != nil {
				g.Expect(err).To(MatchError(tt.wantAllow))
			} else {
				g.Expect(err).NotTo(HaveOccurred())
				tk.Cancel()
			}
			s := b.Snapshot()
			g.Expect(s.State).To(Equal(tt.wantState))
			if tt.saved.State == StateClosed {
				g.Expect(s.Failures).To(Equal(tt.saved.Failures))
				g.Expect(b.Reset("r1", "seen before the restart")).To(BeFalse())
				fail(g, b, 1)
				g.Expect(b.Snapshot().State).To(Equal(StateOpen), "the restored count still counts toward the threshold")
			}
		})
	}
}

func TestRegistryKeepsStateByUID(t *testing.T) {
	g := NewWithT(t)
	r, _, ev := newTestRegistry()
	key := NewKey("shop", "order-api")
	old, _ := r.Upsert(key, "uid-1", Settings{FailureThreshold: 1}, nil)
	fail(g, old, 1)
	g.Expect(old.Snapshot().State).To(Equal(StateOpen))

	// Deleted and created again before the delete was seen: a new uid.
	fresh, created := r.Upsert(key, "uid-2", Settings{FailureThreshold: 1}, nil)
	g.Expect(created).To(BeTrue())
	g.Expect(fresh).NotTo(BeIdenticalTo(old))
	g.Expect(fresh.Snapshot().State).To(Equal(StateClosed), "the new resource does not inherit the old one's state")

	// The old breaker's in-flight calls still end, but tell nobody.
	before := len(ev.transitions[key])
	old.Reset("late", "late reset")
	g.Expect(ev.transitions[key]).To(HaveLen(before), "a replaced breaker's transitions are not delivered")
	fail(g, fresh, 1)
	g.Expect(ev.transitions[key]).To(HaveLen(before + 1))
}

func TestDeletedBreakerTellsNobody(t *testing.T) {
	g := NewWithT(t)
	r, _, ev := newTestRegistry()
	key := NewKey("shop", "gone")
	b, _ := r.Upsert(key, "uid-1", Settings{FailureThreshold: 1000}, nil)
	inFlight, err := b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
	r.Delete(key)
	inFlight.Failure(Failure{StatusCode: 503})
	b.Reset("after-delete", "reset")
	r.flushCountChanges()
	g.Expect(ev.transitions).NotTo(HaveKey(key))
	g.Expect(ev.counts).To(BeEmpty())
}

func TestRegistryCoalescesCountChanges(t *testing.T) {
	g := NewWithT(t)
	r, clk, ev := newTestRegistry()
	a, _ := r.Upsert(NewKey("shop", "a"), "uid-1", Settings{FailureThreshold: 1000}, nil)
	r.Upsert(NewKey("shop", "quiet"), "uid-1", Settings{}, nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { r.Run(ctx, time.Second); close(done) }()
	g.Eventually(clk.HasWaiters).Should(BeTrue())

	fail(g, a, 500)
	g.Expect(ev.counts).To(BeEmpty(), "nothing is reported before the interval")
	clk.Step(time.Second)
	g.Eventually(func() []Key { ev.mu.Lock(); defer ev.mu.Unlock(); return append([]Key(nil), ev.counts...) }).
		Should(Equal([]Key{"shop/a"}), "500 failures are one report, and only for the breaker that changed")

	cancel()
	<-done
	r.flushCountChanges()
	g.Expect(ev.counts).To(HaveLen(1), "no change, no report")
}
