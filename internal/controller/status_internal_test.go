package controller

import (
	"testing"

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
