package controller_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/notify"
)

// hookReceiver is a webhook receiver on loopback that records what every
// replica notified it of.
type hookReceiver struct {
	*httptest.Server
	mu  sync.Mutex
	got []notify.Notification
}

func newHookReceiver(t *testing.T) *hookReceiver {
	r := &hookReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var n notify.Notification
		if err := json.NewDecoder(req.Body).Decode(&n); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.got = append(r.got, n)
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

// count counts the notifications of a transition to state to, resets
// (reset true) or the others (false).
func (r *hookReceiver) count(to breaker.State, reset bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, got := range r.got {
		if got.To == to.String() && strings.HasPrefix(got.Reason, "breaker reset to Closed") == reset {
			n++
		}
	}
	return n
}

// at reports whether a notification of a transition to to at the time at arrived.
func (r *hookReceiver) at(to breaker.State, at time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, got := range r.got {
		if got.To == to.String() && got.Time.Truncate(time.Microsecond).Equal(at.Truncate(time.Microsecond)) {
			return true
		}
	}
	return false
}

// leaderLease is the Lease the harness's replicas elect their leader by.
const leaderLease = "circuit-breaker-operator-test"

// holdLeaderLease has someone who is not a replica hold the leader Lease
// for an hour: nobody of the replicas leads.
func holdLeaderLease(g Gomega, namespace string) {
	g.Eventually(func() error {
		var l coordinationv1.Lease
		if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: namespace, Name: leaderLease}, &l); err != nil {
			return err
		}
		now := metav1.NewMicroTime(time.Now())
		l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds = ptr.To("someone-else"), ptr.To(int32(3600))
		l.Spec.AcquireTime, l.Spec.RenewTime = &now, &now
		return k8sClient.Update(context.Background(), &l)
	}).Should(Succeed())
}

// Every transition is announced (an Event and a webhook notification)
// once: by the leader of the moment; while nobody leads, by the replica
// elected next, which does not announce again what the leader before it
// did (its decisions, followed, and a reset each replica made by itself).
func TestAnnouncedOnceAcrossAHandover(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	hooks := newHookReceiver(t)
	first := startManager(t, ns, controller.Options{}, withLeaderElection(ns), withWebhook(hooks.URL))
	g.Eventually(first.Elector.Leading).Should(BeTrue())
	second := startManager(t, ns, controller.Options{}, withLeaderElection(ns), withWebhook(hooks.URL))
	g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "order-api", withThreshold(2), withRecovery(time.Hour)))).To(Succeed())
	fromFirst := liveBreaker(g, first, ns, "order-api")
	fromSecond := liveBreaker(g, second, ns, "order-api")
	phase := func(name string, f func(g Gomega)) {
		if !t.Run(name, func(t *testing.T) { f(NewWithT(t)) }) {
			t.FailNow()
		}
	}

	phase("the leader announces what the follower decides, once", func(g Gomega) {
		failCalls(g, fromSecond, 2)
		g.Eventually(func() int { return hooks.count(breaker.StateOpen, false) }).Should(Equal(1))
		g.Eventually(func() []string { return events(g, ns, "order-api") }).Should(ContainElement(HavePrefix("Opened: following replica " + second.name)))
		reset(g, ns, "order-api", "r1")
		g.Eventually(func() int { return hooks.count(breaker.StateClosed, true) }).Should(Equal(1))
		g.Eventually(func() breaker.State { return fromSecond.Snapshot().State }).Should(Equal(breaker.StateClosed))
	})

	var opened time.Time
	phase("nobody leads: a transition is announced by nobody yet", func(g Gomega) {
		holdLeaderLease(g, ns)
		g.Eventually(first.Elector.Leading).Should(BeFalse())
		g.Expect(second.Elector.Leading()).To(BeFalse())
		failCalls(g, fromSecond, 2)
		opened = fromSecond.Snapshot().LastTransitionTime
		g.Eventually(func() time.Time { return fromFirst.Snapshot().LastTransitionTime }).
			Should(BeTemporally("~", opened, time.Microsecond), "the other replica follows")
		// Each replica writes its entry after announcing (or not): both
		// entries say so once both are done with the transition.
		g.Eventually(func(g Gomega) {
			cb := getBreaker(g, ns, "order-api")
			for _, h := range []*harness{first, second} {
				e, ok := entryOf(cb, h.name)
				g.Expect(ok).To(BeTrue())
				g.Expect(e.State).To(Equal(cbv1.StateOpen), h.name)
			}
		}).Should(Succeed())
		g.Expect(countPrefix(events(g, ns, "order-api"), "Opened:")).To(Equal(1))
		g.Expect(hooks.count(breaker.StateOpen, false)).To(Equal(1))
	})

	phase("the follower is elected and announces it, once", func(g Gomega) {
		first.stop()
		g.Expect(k8sClient.Delete(context.Background(), &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: leaderLease}})).To(Succeed())
		g.Eventually(second.Elector.Leading).Should(BeTrue())
		g.Eventually(func() bool { return hooks.at(breaker.StateOpen, opened) }).Should(BeTrue(), "the transition nobody announced")
		// A last transition, announced after anything the new leader could
		// announce twice: its webhook delivers in order.
		reset(g, ns, "order-api", "r2")
		g.Eventually(func() int { return hooks.count(breaker.StateClosed, true) }).Should(Equal(2))
		g.Expect(hooks.count(breaker.StateOpen, false)).To(Equal(2), "each opening once")
		list := events(g, ns, "order-api")
		g.Expect(countPrefix(list, "Opened:")).To(Equal(2), "each opening once: %v", list)
		g.Expect(countPrefix(list, "Reset:")).To(Equal(2), "each reset once: %v", list)
		g.Expect(countPrefix(list, "Closed:")).To(BeZero(), "a reset is announced as a reset: %v", list)
	})
}

// A transition while the API server is away, or refuses the leader's
// writes, is announced once it answers: one Event and one notification,
// whether the leader kept its Lease or lost it and was elected again.
func TestAnnouncedOnceAcrossAnOutage(t *testing.T) {
	cases := []struct {
		name  string
		fault func(*atomic.Bool) harnessOption
		// losesLease: the fault outlasts the leader's Lease.
		losesLease bool
	}{
		{"the API server away for longer than the Lease of the leader", withOutage, true},
		{"status writes and Events refused while the Lease holds", withRefusedWrites, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			hooks := newHookReceiver(t)
			var down atomic.Bool
			h := startManager(t, ns, controller.Options{}, withLeaderElection(ns), withWebhook(hooks.URL), tc.fault(&down))
			g.Eventually(h.Elector.Leading).Should(BeTrue())
			g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "order-api", withThreshold(2), withRecovery(time.Hour)))).To(Succeed())
			b := liveBreaker(g, h, ns, "order-api")
			g.Eventually(func(g Gomega) {
				g.Expect(getBreaker(g, ns, "order-api").Status.ObservedGeneration).To(Equal(int64(1)))
			}).Should(Succeed())

			down.Store(true)
			if tc.losesLease {
				g.Eventually(h.Elector.Leading).Should(BeFalse())
			}
			tries := h.entryWrites.Load()
			failCalls(g, b, 2)
			opened := b.Snapshot().LastTransitionTime
			// The reconcile of the transition announces before it writes
			// this replica's entry, which fails.
			g.Eventually(h.entryWrites.Load).Should(BeNumerically(">", tries))
			g.Expect(countPrefix(events(g, ns, "order-api"), "Opened:")).To(BeZero())
			g.Expect(hooks.count(breaker.StateOpen, false)).To(BeZero())

			down.Store(false)
			g.Eventually(h.Elector.Leading).Should(BeTrue())
			g.Eventually(func() bool { return hooks.at(breaker.StateOpen, opened) }).Should(BeTrue(), "announced once the API server answers")
			g.Eventually(func(g Gomega) {
				cb := getBreaker(g, ns, "order-api")
				g.Expect(cb.Status.State).To(Equal(cbv1.StateOpen))
				g.Expect(cb.Status.History).To(ContainElement(HaveField("To", cbv1.StateOpen)))
			}).Should(Succeed())
			reset(g, ns, "order-api", "after")
			g.Eventually(func() int { return hooks.count(breaker.StateClosed, true) }).Should(Equal(1))
			g.Expect(hooks.count(breaker.StateOpen, false)).To(Equal(1))
			list := events(g, ns, "order-api")
			g.Expect(countPrefix(list, "Opened:")).To(Equal(1), "%v", list)
			g.Expect(countPrefix(list, "Reset:")).To(Equal(1), "%v", list)
		})
	}
}
