package controller

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// The status writer's copy of its last write goes as soon as the cache
// shows that write (or a new resource under the name), without waiting for
// the breaker's next reconcile; while the cache lags, it stays.
func TestWrittenCopyGoesWhenTheCacheCatchesUp(t *testing.T) {
	key := breaker.NewKey("shop", "order-api")
	written := writtenStatus{uid: "uid-1", resourceVersion: "42", status: &cbv1.CircuitBreakerStatus{State: cbv1.StateOpen}}
	seen := func(uid, resourceVersion string) *cbv1.CircuitBreaker {
		return &cbv1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "order-api",
			UID: k8stypes.UID(uid), ResourceVersion: resourceVersion}}
	}
	cases := []struct {
		name string
		seen *cbv1.CircuitBreaker
		kept bool
	}{
		{"the cache has not seen the write", seen("uid-1", "41"), true},
		{"the cache shows the write", seen("uid-1", "42"), false},
		{"a new resource under the name", seen("uid-2", "50"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			var w leaderStatusWriter
			w.written.Store(key, written)
			w.caughtUp(tc.seen)
			_, kept := w.written.Load(key)
			g.Expect(kept).To(Equal(tc.kept))
			if kept {
				// What base then reads is the write, not the lagging cache.
				g.Expect(w.base(key, tc.seen).State).To(Equal(cbv1.StateOpen))
			}
		})
	}
}

// What a user or another replica waits for is written at once; counts and
// the fleet view wait behind it (maxBackgroundWrites).
func TestCarriesDecision(t *testing.T) {
	at := metav1.NewTime(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC))
	base := cbv1.CircuitBreakerStatus{State: cbv1.StateClosed, ObservedGeneration: 1, LastTransitionTime: &at, FailureCount: 1,
		Conditions: []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Serving"}}}
	cases := []struct {
		name   string
		change func(*cbv1.CircuitBreakerStatus)
		want   bool
	}{
		{"a transition", func(s *cbv1.CircuitBreakerStatus) { s.State = cbv1.StateOpen }, true},
		{"a new transition time", func(s *cbv1.CircuitBreakerStatus) {
			later := metav1.NewTime(at.Add(time.Second))
			s.LastTransitionTime = &later
		}, true},
		{"a reset handled", func(s *cbv1.CircuitBreakerStatus) { s.LastHandledReset = "r1" }, true},
		{"a spec change handled", func(s *cbv1.CircuitBreakerStatus) { s.ObservedGeneration = 2 }, true},
		{"a condition", func(s *cbv1.CircuitBreakerStatus) { s.Conditions[0].Status = metav1.ConditionFalse }, true},
		{"the history", func(s *cbv1.CircuitBreakerStatus) { s.History = append(s.History, cbv1.TransitionRecord{}) }, true},
		{"counts", func(s *cbv1.CircuitBreakerStatus) { s.FailureCount = 2 }, false},
		{"the fleet view", func(s *cbv1.CircuitBreakerStatus) { s.OpenReplicas = "2/2" }, false},
		{"endpoints", func(s *cbv1.CircuitBreakerStatus) { s.Endpoints = &cbv1.EndpointsStatus{Ready: 3} }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status := base.DeepCopy()
			tc.change(status)
			NewWithT(t).Expect(carriesDecision(&base, status)).To(Equal(tc.want))
		})
	}
}
