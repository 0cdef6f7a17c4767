package restapi

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	index map[client.ObjectKey]int
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

// Get reads one object as the informer cache does: a deep copy.
func (c cacheLister) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	if i, ok := c.index[key]; ok {
		c.items[i].DeepCopyInto(obj.(*cbv1.CircuitBreaker))
		return nil
	}
	return apierrors.NewNotFound(cbv1.GroupVersion.WithResource("circuitbreakers").GroupResource(), key.Name)
}

// discard is a ResponseWriter that keeps nothing, so that only what the
// handler allocates is measured.
type discard struct{ header http.Header }

func (d *discard) Header() http.Header         { return d.header }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkList is one poll of every one of 10,000 breakers (the
// contract's route without parameters), and one of the dashboard's pages
// of them: 200 breakers, the first page and one in the middle of the
// fleet. Each breaker has traffic, a transition and two replicas' entries
// in its status.
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
	index := make(map[client.ObjectKey]int, n)
	for i := range items {
		index[client.ObjectKeyFromObject(&items[i])] = i
	}
	s := New(registry, cacheLister{items: items, index: index}, clk, Options{BindAddress: "127.0.0.1:8082", Log: logr.Discard()})
	for _, bb := range []struct{ name, query string }{
		{"all", ""},
		{"page", "?limit=200"},
		{"page-in-the-middle", "?limit=200&continue=team-9/svc-05009"},
	} {
		b.Run(bb.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:8082/api/circuit-breakers"+bb.query, nil)
			b.ReportAllocs()
			for b.Loop() {
				s.ServeHTTP(&discard{header: http.Header{}}, req)
			}
		})
	}
}
