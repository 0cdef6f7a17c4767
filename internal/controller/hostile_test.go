package controller_test

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
)

// A Service upstream is read from the API server: a missing Service (or
// CA bundle) is answered 503 until it exists; an ExternalName Service
// (which could aim the proxy anywhere) is refused.
func TestServiceUpstreamsAreRead(t *testing.T) {
	tests := []struct {
		name    string
		service *corev1.Service // created before the breaker; nil: none
		scheme  string          // spec.upstream.service.scheme
		trust   *cbv1.UpstreamTLS
		reason  string
		stalled bool
		code    int
		message string
	}{
		{name: "missing", reason: controller.ReasonServiceNotFound, code: 503, message: "Service %s/backend not found"},
		{name: "ExternalName", reason: controller.ReasonUpstreamNotAllowed, stalled: true, code: 403,
			message: "Service %s/backend is an ExternalName Service",
			service: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "backend"},
				Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"}}},
		// The CA bundle to trust is missing: answered 503 until it exists
		// (tls_test.go has the rest).
		{name: "https", scheme: "https", reason: controller.ReasonCAConfigMapNotFound, code: 503,
			trust:   &cbv1.UpstreamTLS{CAConfigMap: &cbv1.ConfigMapKey{Name: "cluster-ca"}},
			message: "ConfigMap %s/cluster-ca (spec.upstream.tls.caConfigMap) not found",
			service: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "backend"},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 8080}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			h := startManager(t, ns, controller.Options{})
			px := proxyFor(t, h)
			if tt.service != nil {
				tt.service.Namespace = ns
				g.Expect(k8sClient.Create(context.Background(), tt.service)).To(Succeed())
			}
			g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "cb", func(cb *cbv1.CircuitBreaker) {
				cb.Spec.Upstream.Service.Name = "backend"
				cb.Spec.Upstream.Service.Scheme, cb.Spec.Upstream.TLS = tt.scheme, tt.trust
			}))).To(Succeed())
			g.Eventually(func(g Gomega) {
				cb := getBreaker(g, ns, "cb")
				g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
				ready := meta.FindStatusCondition(cb.Status.Conditions, cbv1.ConditionReady)
				g.Expect(ready).NotTo(BeNil())
				g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
				g.Expect(ready.Reason).To(Equal(tt.reason))
				g.Expect(ready.Message).To(HavePrefix(tt.message, ns))
				g.Expect(meta.IsStatusConditionTrue(cb.Status.Conditions, cbv1.ConditionStalled)).To(Equal(tt.stalled))
			}).Should(Succeed())
			g.Eventually(func() int { return call(g, px.URL+"/"+ns+"/cb/x") }).Should(Equal(tt.code))
			_, live := h.Registry.Get(breaker.NewKey(ns, "cb"))
			g.Expect(live).To(BeFalse())

			if tt.service == nil {
				// The Service appears: the breaker serves, with no change to it.
				createService(t, ns, "backend")
				g.Eventually(func(g Gomega) {
					cb := getBreaker(g, ns, "cb")
					g.Expect(meta.IsStatusConditionTrue(cb.Status.Conditions, cbv1.ConditionReady)).To(BeTrue())
					g.Expect(cb.Status.Upstream).To(Equal("http://backend." + ns + ".svc.cluster.local:8080"))
				}).Should(Succeed())
			}
		})
	}
}

// A reset value too long to record is refused and reported; the status
// stays writable and nothing of the value is written into it.
func TestOverlongResetValueIsRefused(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{})
	b := openBreaker(g, h, ns, "order-api")
	long := strings.Repeat("9", 1000)
	annotateReset(g, ns, "order-api", long)
	g.Eventually(func(g Gomega) {
		ready := meta.FindStatusCondition(getBreaker(g, ns, "order-api").Status.Conditions, cbv1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Message).To(HaveSuffix("reset refused: the value of circuitbreaker.io/reset is 1000 characters long, at most 253 are accepted"))
	}).Should(Succeed())
	g.Eventually(func() []string { return events(g, ns, "order-api") }).Should(ContainElement(
		"Reset: reset refused: the value of circuitbreaker.io/reset is 1000 characters long, at most 253 are accepted"))
	cb := getBreaker(g, ns, "order-api")
	g.Expect(cb.Status.State).To(Equal(cbv1.StateOpen), "not reset")
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateOpen))
	g.Expect(cb.Status.LastHandledReset).To(BeEmpty())
	for _, h := range cb.Status.History {
		g.Expect(h.Reason).NotTo(ContainSubstring(long[:300]))
	}

	// The status is still writable: a spec change is observed, and a
	// valid reset still works.
	bumpAndObserve(g, ns, "order-api")
	reset(g, ns, "order-api", "short")
	g.Expect(getBreaker(g, ns, "order-api").Status.State).To(Equal(cbv1.StateClosed))
	g.Expect(countPrefix(events(g, ns, "order-api"), "Reset: reset refused")).To(Equal(1), "reported once per value")
}

// The reset value reaches Events, history and webhooks with nothing a chat
// renders as a link or a mention; lastHandledReset keeps it as written.
func TestResetValueIsShownSanitised(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{})
	openBreaker(g, h, ns, "order-api")
	const value = "<!channel> @here see https://evil.example.com/x?a=1"
	const shown = "breaker reset to Closed by annotation circuitbreaker.io/reset=__channel___here_see_https___evil_example_com_x_a_1"
	reset(g, ns, "order-api", value)
	g.Eventually(func(g Gomega) {
		g.Expect(getBreaker(g, ns, "order-api").Status.History).To(ContainElement(HaveField("Reason", shown)))
	}).Should(Succeed())
	g.Eventually(func() []string { return events(g, ns, "order-api") }).Should(ContainElement("Reset: " + shown))
}

// A breaker whose upstream is the proxy itself loops: the first hop back
// into the proxy is answered 508, and the breaker records no failure.
func TestLoopThroughTheProxyIsAnswered508(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{AllowURLUpstreams: true})
	px := proxyFor(t, h)
	g.Expect(k8sClient.Create(context.Background(), urlBreaker(ns, "loop", px.URL+"/"+ns+"/loop", 1, time.Hour))).To(Succeed())
	g.Eventually(func() int { return call(g, px.URL+"/"+ns+"/loop/x") }).Should(Equal(508))
	for range 3 {
		g.Expect(call(g, px.URL+"/"+ns+"/loop/x")).To(Equal(508))
	}
	b := liveBreaker(g, h, ns, "loop")
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed), "threshold 1, and still Closed: a loop is no verdict")
	g.Expect(b.Snapshot().Failures).To(BeZero())
}
