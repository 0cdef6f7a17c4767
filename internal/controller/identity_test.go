package controller_test

import (
	"context"

	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientevents "k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/controlplane"
	"github.com/circuitbreaker-io/operator/internal/leader"
	"github.com/circuitbreaker-io/operator/internal/metrics"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

// directReconciler is a leading Reconciler with no manager: the test calls
// Reconcile itself, so it decides exactly what each reconcile sees. It
// reads from the API server, not a cache: a Service's slices, which a
// reconcile lists through the cache's index, are asked for by their label.
func directReconciler(g Gomega) (*controller.Reconciler, *breaker.Registry) {
	registry := breaker.NewRegistry(clock.RealClock{})
	api, err := client.NewWithWatch(restConfig, client.Options{Scheme: controlplane.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())
	direct := interceptor.NewClient(api, interceptor.Funcs{
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			var o client.ListOptions
			o.ApplyOptions(opts)
			if o.FieldSelector == nil {
				return c.List(ctx, list, opts...)
			}
			if service, ok := o.FieldSelector.RequiresExactMatch(controller.SliceServiceIndex); ok {
				return c.List(ctx, list, client.InNamespace(o.Namespace), client.MatchingLabels{discoveryv1.LabelServiceName: service})
			}
			return c.List(ctx, list, opts...)
		},
	})
	r := controller.New(direct, clientevents.NewFakeRecorder(100), registry, proxy.NewTable(metrics.NewBreakers(prometheus.NewRegistry())),
		leader.Always(), controller.Options{})
	return r, registry
}

func reconcileOnce(g Gomega, r *controller.Reconciler, namespace, name string) ctrl.Result {
	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKey{Namespace: namespace, Name: name}})
	g.Expect(err).NotTo(HaveOccurred())
	return res
}

// A resource deleted and created again under the same name, faster than the
// controller sees the delete, is a new breaker: it does not inherit the old
// one's Open state.
func TestRecreatedResourceStartsFresh(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	ctx := context.Background()
	r, registry := directReconciler(g)
	g.Expect(k8sClient.Create(ctx, newCircuitBreaker(ns, "order-api", withThreshold(2), withRecovery(time.Hour)))).To(Succeed())
	reconcileOnce(g, r, ns, "order-api")
	old, ok := registry.Get(breaker.NewKey(ns, "order-api"))
	g.Expect(ok).To(BeTrue())
	failCalls(g, old, 2)
	reconcileOnce(g, r, ns, "order-api")
	g.Expect(getBreaker(g, ns, "order-api").Status.State).To(Equal(cbv1.StateOpen))

	g.Expect(k8sClient.Delete(ctx, getBreaker(g, ns, "order-api"))).To(Succeed())
	g.Expect(k8sClient.Create(ctx, newCircuitBreaker(ns, "order-api", withThreshold(2), withRecovery(time.Hour)))).To(Succeed())
	reconcileOnce(g, r, ns, "order-api") // the first reconcile sees only the new resource

	fresh, ok := registry.Get(breaker.NewKey(ns, "order-api"))
	g.Expect(ok).To(BeTrue())
	g.Expect(fresh).NotTo(BeIdenticalTo(old))
	g.Expect(fresh.Snapshot().State).To(Equal(breaker.StateClosed))
	cb := getBreaker(g, ns, "order-api")
	g.Expect(cb.Status.State).To(Equal(cbv1.StateClosed))
	g.Expect(cb.Status.FailureCount).To(BeZero())
	g.Expect(cb.Status.History).To(BeEmpty())
}

// A call still in flight when its breaker is deleted ends without bringing
// back the deleted breaker's metric series.
func TestCallEndingAfterDeleteLeavesNoSeries(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{AllowURLUpstreams: true})
	var arrived atomic.Bool
	release := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/hold") {
			arrived.Store(true)
			<-release
		}
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer upstream.Close()
	px := proxyFor(t, h)
	ctx := context.Background()
	g.Expect(k8sClient.Create(ctx, urlBreaker(ns, "going", upstream.URL, 1, time.Hour))).To(Succeed())
	g.Eventually(func() int { return call(g, px.URL+"/"+ns+"/going/warm") }).Should(Equal(500))
	reset(g, ns, "going", "warm-up")

	done := make(chan int)
	go func() { done <- call(g, px.URL+"/"+ns+"/going/hold") }()
	g.Eventually(arrived.Load).Should(BeTrue())
	g.Expect(k8sClient.Delete(ctx, getBreaker(g, ns, "going"))).To(Succeed())
	g.Eventually(func() int { return call(g, px.URL+"/"+ns+"/going/x") }).Should(Equal(404))
	close(release)
	g.Expect(<-done).To(Equal(500), "the in-flight call still gets its answer")
	g.Expect(seriesOf(g, h.metrics, "going")).To(BeEmpty(), "a failure that would open the deleted breaker recreates nothing")
}

// reset annotates the breaker and waits until the controller handled it.
func reset(g Gomega, namespace, name, value string) {
	annotateReset(g, namespace, name, value)
	g.Eventually(func(g Gomega) {
		g.Expect(getBreaker(g, namespace, name).Status.LastHandledReset).To(Equal(value))
	}).Should(Succeed())
}

// seriesOf lists "metric{labels}" of every series of the breaker called name.
func seriesOf(g Gomega, reg *prometheus.Registry, name string) []string {
	families, err := reg.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	var out []string
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "name" && l.GetValue() == name {
					out = append(out, f.GetName()+m.String())
				}
			}
		}
	}
	return out
}

// A breaker restored Open whose openUntil is 50ms away shows HalfOpen in
// its status with no traffic at all: the requeue is measured from the
// snapshot, not from after the status write, and never dropped as <= 0.
func TestOpenUntilCloseAheadReachesHalfOpenWithoutTraffic(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	ctx := context.Background()
	g.Expect(k8sClient.Create(ctx, newCircuitBreaker(ns, "order-api", withThreshold(2), withRecovery(time.Hour)))).To(Succeed())
	openUntil := time.Now().Truncate(time.Second).Add(2 * time.Second)
	cb := getBreaker(g, ns, "order-api")
	patch := client.MergeFrom(cb.DeepCopy())
	cb.Status = cbv1.CircuitBreakerStatus{
		State: cbv1.StateOpen, FailureCount: 2,
		LastTransitionTime: &metav1.Time{Time: openUntil.Add(-time.Hour)},
		OpenUntil:          &metav1.Time{Time: openUntil},
	}
	g.Expect(k8sClient.Status().Patch(ctx, cb, patch)).To(Succeed())

	// The manager's clock reads openUntil-50ms as it starts.
	shifted := &shiftedClock{offset: time.Until(openUntil.Add(-50 * time.Millisecond))}
	startManager(t, ns, controller.Options{}, withClock(shifted))
	g.Eventually(func(g Gomega) {
		st := getBreaker(g, ns, "order-api").Status
		g.Expect(st.State).To(Equal(cbv1.StateHalfOpen))
		g.Expect(st.ObservedGeneration).NotTo(BeZero())
	}).Should(Succeed())
	g.Eventually(func() []string { return events(g, ns, "order-api") }).Should(
		ContainElement("HalfOpened: recovery timeout of 1h0m0s elapsed"))
}

// shiftedClock is the real clock moved by offset.
type shiftedClock struct {
	clock.RealClock
	offset time.Duration
}

func (c *shiftedClock) Now() time.Time                  { return time.Now().Add(c.offset) }
func (c *shiftedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// A spec that cannot be served is Stalled (kstatus) with the Ready reason,
// and stops being Stalled once it is fixed.
func TestRefusedSpecIsStalledUntilFixed(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{})
	ctx := context.Background()
	g.Expect(k8sClient.Create(ctx, urlBreaker(ns, "ext", "https://api.example.com", 3, time.Second))).To(Succeed())
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "ext")
		g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
		for _, kind := range []string{cbv1.ConditionReady, cbv1.ConditionStalled} {
			c := meta.FindStatusCondition(cb.Status.Conditions, kind)
			g.Expect(c).NotTo(BeNil(), kind)
			g.Expect(c.Reason).To(Equal(controller.ReasonUpstreamNotAllowed), kind)
			g.Expect(c.Message).To(Equal("spec.upstream.url is refused: the manager runs without --allow-url-upstreams"), kind)
		}
		g.Expect(meta.IsStatusConditionFalse(cb.Status.Conditions, cbv1.ConditionReady)).To(BeTrue())
		g.Expect(meta.IsStatusConditionTrue(cb.Status.Conditions, cbv1.ConditionStalled)).To(BeTrue())
	}).Should(Succeed())
	_, live := h.Registry.Get(breaker.NewKey(ns, "ext"))
	g.Expect(live).To(BeFalse(), "a refused breaker has no live state")

	createService(t, ns, "ext")
	cb := getBreaker(g, ns, "ext")
	patch := client.MergeFrom(cb.DeepCopy())
	cb.Spec.Upstream = cbv1.Upstream{Service: &cbv1.ServiceUpstream{Name: "ext", Port: intstr.FromInt32(8080), Scheme: "http"}}
	g.Expect(k8sClient.Patch(ctx, cb, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "ext")
		g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
		g.Expect(meta.IsStatusConditionTrue(cb.Status.Conditions, cbv1.ConditionReady)).To(BeTrue())
		g.Expect(meta.FindStatusCondition(cb.Status.Conditions, cbv1.ConditionStalled)).To(BeNil())
	}).Should(Succeed())
}
