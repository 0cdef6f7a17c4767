package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// A decision (another replica's new transition, or one of this replica's
// own) is reconciled before the backlog of count updates and fleet views a
// starting replica leaves; a change that is not a decision waits its turn.
func TestDecisionsGoFirst(t *testing.T) {
	at := metav1.NewMicroTime(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
	later := metav1.NewMicroTime(at.Add(time.Second))
	entry := func(name, state string, transition *metav1.MicroTime, failures int32) cbv1.ReplicaStatus {
		return cbv1.ReplicaStatus{Name: name, State: state, LastTransitionTime: transition, FailureCount: failures, LastUpdate: at}
	}
	cases := []struct {
		name          string
		before, after []cbv1.ReplicaStatus
		first         bool
	}{
		{"another replica opened", []cbv1.ReplicaStatus{entry("pod-b", cbv1.StateClosed, &at, 0)},
			[]cbv1.ReplicaStatus{entry("pod-b", cbv1.StateOpen, &later, 0)}, true},
		{"another replica's first entry, with a transition", nil,
			[]cbv1.ReplicaStatus{entry("pod-b", cbv1.StateOpen, &later, 3)}, true},
		{"another replica's counts changed", []cbv1.ReplicaStatus{entry("pod-b", cbv1.StateClosed, &at, 1)},
			[]cbv1.ReplicaStatus{entry("pod-b", cbv1.StateClosed, &at, 2)}, false},
		{"another replica's first entry, without a transition", nil,
			[]cbv1.ReplicaStatus{entry("pod-b", cbv1.StateClosed, nil, 1)}, false},
		{"this replica's own entry changed", []cbv1.ReplicaStatus{entry("pod-a", cbv1.StateClosed, &at, 0)},
			[]cbv1.ReplicaStatus{entry("pod-a", cbv1.StateOpen, &later, 0)}, false},
		// A replica starting restores the decision the fleet made: the
		// same time as the entry already there, nothing new to follow.
		{"a starting replica's first entry, restoring the decision", []cbv1.ReplicaStatus{entry("pod-a", cbv1.StateOpen, &later, 0)},
			[]cbv1.ReplicaStatus{entry("pod-a", cbv1.StateOpen, &later, 0), entry("pod-b", cbv1.StateOpen, &later, 0)}, false},
		{"a starting replica's first entry, older than the decision", []cbv1.ReplicaStatus{entry("pod-a", cbv1.StateOpen, &later, 0)},
			[]cbv1.ReplicaStatus{entry("pod-a", cbv1.StateOpen, &later, 0), entry("pod-b", cbv1.StateClosed, &at, 0)}, false},
		{"a starting replica's first entry, with a newer transition", []cbv1.ReplicaStatus{entry("pod-a", cbv1.StateClosed, &at, 0)},
			[]cbv1.ReplicaStatus{entry("pod-a", cbv1.StateClosed, &at, 0), entry("pod-b", cbv1.StateOpen, &later, 0)}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			r := &Reconciler{opts: Options{Fleet: Alone("pod-a")}}
			var q workqueue.TypedRateLimitingInterface[reconcile.Request] = priorityqueue.New[reconcile.Request]("test")
			defer q.ShutDown()
			r.queue.Store(&q)
			for i := range 100 { // the backlog, at the default priority
				r.enqueue(breaker.NewKey("team", fmt.Sprintf("svc-%03d", i)))
			}
			decided := breaker.NewKey("shop", "order-api")
			r.enqueue(decided) // already queued, at the back
			old := &cbv1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "order-api"}}
			updated := old.DeepCopy()
			old.Status.Replicas, updated.Status.Replicas = tc.before, tc.after
			r.othersDecided().Update(context.Background(), event.UpdateEvent{ObjectOld: old, ObjectNew: updated}, q)

			next, _ := q.Get()
			if tc.first {
				g.Expect(next.Namespace).To(Equal("shop"), "first out")
			} else {
				g.Expect(next.Namespace).To(Equal("team"), "first out")
			}
			g.Expect(q.Len()).To(Equal(100), "one item per breaker")
		})
	}

	t.Run("this replica's own transition", func(t *testing.T) {
		g := NewWithT(t)
		r := &Reconciler{}
		var q workqueue.TypedRateLimitingInterface[reconcile.Request] = priorityqueue.New[reconcile.Request]("test")
		defer q.ShutDown()
		r.queue.Store(&q)
		for i := range 100 {
			r.enqueue(breaker.NewKey("team", fmt.Sprintf("svc-%03d", i)))
		}
		r.enqueueDecision(breaker.NewKey("shop", "order-api"))
		next, _ := q.Get()
		g.Expect(next.Namespace).To(Equal("shop"))
	})
}

// Only an entry with a transition made or followed since this replica
// started skips the bound on background entry writes.
func TestNewTransition(t *testing.T) {
	at := time.Date(2026, 12, 3, 12, 0, 0, 123456789, time.UTC)
	stored := metav1.NewMicroTime(at.Truncate(time.Microsecond))
	earlier := metav1.NewMicroTime(at.Add(-time.Minute))
	made := breaker.Snapshot{LastTransitionTime: at, History: []breaker.Transition{{Seq: 1, To: breaker.StateOpen, At: at}}}
	restored := breaker.Snapshot{LastTransitionTime: at, History: []breaker.Transition{{Seq: 0, To: breaker.StateOpen, At: at}}}
	cases := []struct {
		name    string
		current *cbv1.ReplicaStatus
		snap    breaker.Snapshot
		want    bool
	}{
		{"a transition, no entry yet", nil, made, true},
		{"a transition the entry does not show", &cbv1.ReplicaStatus{LastTransitionTime: &earlier}, made, true},
		{"a transition the entry shows (counts changed since)", &cbv1.ReplicaStatus{LastTransitionTime: &stored}, made, false},
		{"a state restored at start, no entry yet", nil, restored, false},
		{"no history at all", nil, breaker.Snapshot{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			current, has := cbv1.ReplicaStatus{}, tc.current != nil
			if has {
				current = *tc.current
			}
			NewWithT(t).Expect(newTransition(current, has, replicaEntry("pod-a", tc.snap), tc.snap)).To(Equal(tc.want))
		})
	}
}
