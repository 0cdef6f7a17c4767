package controller_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/prometheus/client_golang/prometheus"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/metrics"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

// A restarted replica is Ready only once every breaker that exists has its
// route: from the first successful readiness check on, none of 300
// existing breakers is answered 404.
func TestReadyMeansEveryRoute(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	upstream, _ := failingUpstream(t)
	const n = 300
	for i := range n {
		g.Expect(k8sClient.Create(context.Background(), urlBreaker(ns, fmt.Sprintf("b-%03d", i), upstream.URL, 5, time.Minute))).To(Succeed())
	}
	h := startManager(t, ns, controller.Options{AllowURLUpstreams: true})
	px := proxyFor(t, h)

	// The same check over routes nobody fills stays unready: it gates on routes.
	idle := controller.NewRoutesReady(h.cache, proxy.NewTable(metrics.NewBreakers(prometheus.NewRegistry())))
	g.Eventually(func() error { return idle.Check(httptest.NewRequest("GET", "/readyz", nil)) }).
		Should(MatchError(fmt.Sprintf("%d CircuitBreakers have no route yet", n)))

	g.Eventually(func() error { return h.Ready.Check(httptest.NewRequest("GET", "/readyz", nil)) }, 60*time.Second, 10*time.Millisecond).
		Should(Succeed())
	notFound := 0
	for i := range n {
		if call(g, fmt.Sprintf("%s/%s/b-%03d/x", px.URL, ns, i)) == 404 {
			notFound++
		}
	}
	g.Expect(notFound).To(BeZero(), "no existing breaker is answered 404 once ready")

	// Once every status is written, healthy breakers that only saw
	// successes cost no replica entries: only views worth telling are written.
	g.Eventually(func(g Gomega) {
		var list cbv1.CircuitBreakerList
		g.Expect(k8sClient.List(context.Background(), &list, client.InNamespace(ns))).To(Succeed())
		for _, cb := range list.Items {
			g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation), cb.Name)
		}
	}, 60*time.Second).Should(Succeed())
	g.Expect(h.entryWrites.Load()).To(BeZero())

	// Breakers deleted after the listing leave the unready check's pending
	// set, each check looking up at most 64 of them in the cache.
	const deleted = 100
	for i := range deleted {
		cb := &cbv1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("b-%03d", i)}}
		g.Expect(k8sClient.Delete(context.Background(), cb)).To(Succeed())
	}
	for i := range deleted {
		g.Eventually(func() bool {
			var cb cbv1.CircuitBreaker
			return apierrors.IsNotFound(h.cache.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: fmt.Sprintf("b-%03d", i)}, &cb))
		}).Should(BeTrue())
	}
	pendingAfter := func() int {
		var pending int
		_, err := fmt.Sscanf(idle.Check(httptest.NewRequest("GET", "/readyz", nil)).Error(), "%d CircuitBreakers have no route yet", &pending)
		g.Expect(err).NotTo(HaveOccurred())
		return pending
	}
	g.Expect(pendingAfter()).To(BeNumerically(">=", n-64), "one check looks up at most 64")
	g.Eventually(pendingAfter).Should(Equal(n-deleted), "every deleted breaker leaves, over a few checks")
}

// Losing the lease never stops the replica: it stops leading, keeps its
// breakers and routes, and leads again once the lease is free.
func TestLostLeaseKeepsTheReplicaRunning(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{}, withLeaderElection(ns))
	g.Eventually(h.Elector.Leading).Should(BeTrue())
	g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "order-api"))).To(Succeed())
	b := liveBreaker(g, h, ns, "order-api")

	// Another holder takes the lease, as after a long pause of this replica.
	var lease coordinationv1.Lease
	key := client.ObjectKey{Namespace: ns, Name: "circuit-breaker-operator-test"}
	g.Eventually(func() error {
		if err := k8sClient.Get(context.Background(), key, &lease); err != nil {
			return err
		}
		lease.Spec.HolderIdentity = ptr.To("usurper")
		lease.Spec.LeaseDurationSeconds = ptr.To(int32(3))
		lease.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
		return k8sClient.Update(context.Background(), &lease)
	}).Should(Succeed())
	g.Eventually(h.Elector.Leading).Should(BeFalse(), "the lease is lost")
	g.Expect(h.exited).NotTo(BeClosed(), "the replica runs on")
	again, ok := h.Registry.Get(breaker.NewKey(ns, "order-api"))
	g.Expect(ok).To(BeTrue())
	g.Expect(again).To(BeIdenticalTo(b), "with the same live breaker")
	g.Expect(h.Routes.Has(breaker.NewKey(ns, "order-api"))).To(BeTrue(), "and its route")

	g.Eventually(h.Elector.Leading, 20*time.Second).Should(BeTrue(), "it campaigns again and leads once the usurper's lease expires")
	g.Expect(h.exited).NotTo(BeClosed())
	bumpAndObserve(g, ns, "order-api") // and writes status again
}
