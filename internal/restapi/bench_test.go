package restapi

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// cacheLister lists as controller-runtime's informer cache does: a deep
// copy of every object, unless the caller passes client.UnsafeDisableDeepCopy.
type cacheLister struct {
	client.Client
	items []cbv1.CircuitBreaker
}

func (c cacheLister) List(_ context.Context, list client.ObjectList, opts ...client.ListOption) error {
	var o client.ListOptions
	o.ApplyOptions(opts)
	l := list.(*cbv1.CircuitBreakerList)
	l.Items = make([]cbv1.CircuitBreaker, len(c.items))
	for i := range c.items {
		if o.UnsafeDisableDeepCopy != nil && *o.UnsafeDisableDeepCopy {
			l.Items[i] = c.items[i]
		} else {
			c.items[i].DeepCopyInto(&l.Items[i])
		}
	}
	return nil
}

// discard is a ResponseWriter that keeps nothing, so that only what the
// handler allocates is measured.
type discard struct{ header http.Header }

func (d *discard) Header() http.Header         { return d.header }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkList is one dashboard poll of 10,000 breakers, each with
// traffic, a transition and two replicas' entries in its status.
func BenchmarkList(b *testing.B) {
	const n = 10000
	clk := clocktesting.NewFakeClock(epoch)
	registry := breaker.NewRegistry(clk)
	items := make([]cbv1.CircuitBreaker, n)
	for i := range n {
		namespace, name := fmt.Sprintf("team-%d", i%20), fmt.Sprintf("svc-%05d", i)
		br, _ := registry.Upsert(breaker.NewKey(namespace, name), "uid", breaker.Settings{FailureThreshold: 1, RecoveryTimeout: time.Minute}, nil)
		tk, _ := br.Allow()
		tk.Failure(breaker.Failure{StatusCode: 503})
		now := metav1.NewMicroTime(epoch)
		items[i] = cbv1.CircuitBreaker{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": name}},
			Status: cbv1.CircuitBreakerStatus{State: cbv1.StateOpen, OpenReplicas: "2/2", Upstream: "http://" + name + ".svc:80",
				Replicas:   []cbv1.ReplicaStatus{{Name: "pod-a", State: cbv1.StateOpen, LastUpdate: now}, {Name: "pod-b", State: cbv1.StateOpen, LastUpdate: now}},
				Conditions: []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Serving", Message: "serving", LastTransitionTime: metav1.NewTime(epoch)}}},
		}
	}
	s := New(registry, cacheLister{items: items}, clk, Options{BindAddress: "127.0.0.1:8082", Log: logr.Discard()})
	req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:8082/api/circuit-breakers", nil)
	b.ReportAllocs()
	for b.Loop() {
		s.ServeHTTP(&discard{header: http.Header{}}, req)
	}
}
