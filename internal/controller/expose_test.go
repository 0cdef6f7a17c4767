package controller_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/controller"
)

func withExpose(serviceName string) func(*cbv1.CircuitBreaker) {
	return func(cb *cbv1.CircuitBreaker) { cb.Spec.Expose = &cbv1.Expose{ServiceName: serviceName} }
}

func exposedCondition(g Gomega, namespace, name string) *metav1.Condition {
	c := meta.FindStatusCondition(getBreaker(g, namespace, name).Status.Conditions, cbv1.ConditionExposed)
	g.Expect(c).NotTo(BeNil(), "the Exposed condition")
	return c
}

func getService(g Gomega, namespace, name string) *corev1.Service {
	var svc corev1.Service
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: namespace, Name: name}, &svc)).To(Succeed())
	return &svc
}

// hostCall is a GET of path on the proxy with Host host; it returns the
// status and the body.
func hostCall(g Gomega, proxyURL, host, path string) (int, string) {
	req, err := http.NewRequest(http.MethodGet, proxyURL+path, nil)
	g.Expect(err).NotTo(HaveOccurred())
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// spec.expose: the operator keeps an ExternalName Service pointing at the
// proxy's, controlled by the breaker, and the proxy routes its Host to the
// breaker; a Service of that name the operator does not own is left
// alone; removing spec.expose deletes the owned Service.
func TestExposedService(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "path "+r.URL.RequestURI())
	}))
	t.Cleanup(upstream.Close)
	h := startManager(t, ns, controller.Options{AllowURLUpstreams: true,
		ProxyService: types.NamespacedName{Namespace: "cb-system", Name: "cb-proxy"}, ClusterDomain: "corp.example."})
	px := proxyFor(t, h)
	const target = "cb-proxy.cb-system.svc.corp.example"

	exposed := func(name string, mutate ...func(*cbv1.CircuitBreaker)) *cbv1.CircuitBreaker {
		cb := urlBreaker(ns, name, upstream.URL, 3, time.Minute)
		for _, m := range mutate {
			m(cb)
		}
		return cb
	}

	t.Run("the default name, with its ownerReference and target; its Host routes", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(k8sClient.Create(ctx, exposed("orders", withExpose("")))).To(Succeed())
		g.Eventually(func(g Gomega) {
			c := exposedCondition(g, ns, "orders")
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue), c.Message)
			g.Expect(c.Reason).To(Equal(controller.ReasonServiceOwned))
			g.Expect(getBreaker(g, ns, "orders").Status.ExposedAs).To(Equal("orders-breaker." + ns + ".svc.corp.example"))
		}).Should(Succeed())
		cb := getBreaker(g, ns, "orders")
		svc := getService(g, ns, "orders-breaker")
		g.Expect(svc.Spec.Type).To(Equal(corev1.ServiceTypeExternalName))
		g.Expect(svc.Spec.ExternalName).To(Equal(target))
		owner := metav1.GetControllerOf(svc)
		g.Expect(owner).NotTo(BeNil())
		g.Expect(owner.UID).To(Equal(cb.UID))
		g.Expect(owner.Kind).To(Equal("CircuitBreaker"))
		g.Expect(owner.APIVersion).To(Equal(cbv1.GroupVersion.String()))

		status, body := hostCall(g, px.URL, "orders-breaker."+ns+".svc.corp.example:80", "/v1/items?page=2")
		g.Expect(status).To(Equal(200), body)
		g.Expect(body).To(Equal("path /v1/items?page=2"))
	})

	t.Run("expose.serviceName names the Service", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(k8sClient.Create(ctx, exposed("billing", withExpose("payments")))).To(Succeed())
		g.Eventually(func(g Gomega) {
			g.Expect(getBreaker(g, ns, "billing").Status.ExposedAs).To(Equal("payments." + ns + ".svc.corp.example"))
		}).Should(Succeed())
		g.Expect(metav1.GetControllerOf(getService(g, ns, "payments")).Name).To(Equal("billing"))
		status, body := hostCall(g, px.URL, "payments."+ns, "/pay")
		g.Expect(status).To(Equal(200), body)
		g.Expect(body).To(Equal("path /pay"))
	})

	t.Run("a Service of that name that is not the breaker's is left alone", func(t *testing.T) {
		g := NewWithT(t)
		foreign := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "stock-breaker", Labels: map[string]string{"team": "stock"}},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}
		g.Expect(k8sClient.Create(ctx, foreign)).To(Succeed())
		before := getService(g, ns, "stock-breaker")
		g.Expect(k8sClient.Create(ctx, exposed("stock", withExpose("")))).To(Succeed())
		g.Eventually(func(g Gomega) {
			c := exposedCondition(g, ns, "stock")
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(controller.ReasonServiceConflict))
			g.Expect(c.Message).To(Equal("Service stock-breaker exists and is not this breaker's: it is left alone"))
		}).Should(Succeed())
		g.Eventually(func() []string { return events(g, ns, "stock") }).Should(ContainElement(
			"ServiceConflict: Service stock-breaker exists and is not this breaker's: it is left alone; choose another spec.expose.serviceName"))
		g.Expect(getBreaker(g, ns, "stock").Status.ExposedAs).To(BeEmpty())
		after := getService(g, ns, "stock-breaker")
		g.Expect(after.ResourceVersion).To(Equal(before.ResourceVersion), "never modified")
		g.Expect(after.Spec.Type).To(Equal(corev1.ServiceTypeClusterIP))
		status, body := hostCall(g, px.URL, "stock-breaker."+ns, "/x")
		g.Expect(status).To(Equal(404), "its Host is not routed: %s", body)

		// Removing spec.expose leaves the foreign Service where it is.
		cb := getBreaker(g, ns, "stock")
		patch := client.MergeFrom(cb.DeepCopy())
		cb.Spec.Expose = nil
		g.Expect(k8sClient.Patch(ctx, cb, patch)).To(Succeed())
		g.Eventually(func(g Gomega) {
			g.Expect(meta.FindStatusCondition(getBreaker(g, ns, "stock").Status.Conditions, cbv1.ConditionExposed)).To(BeNil())
		}).Should(Succeed())
		g.Expect(getService(g, ns, "stock-breaker").ResourceVersion).To(Equal(before.ResourceVersion))
	})

	t.Run("removing spec.expose deletes the owned Service; renaming moves it", func(t *testing.T) {
		g := NewWithT(t)
		cb := getBreaker(g, ns, "billing")
		patch := client.MergeFrom(cb.DeepCopy())
		cb.Spec.Expose.ServiceName = "billing-v2"
		g.Expect(k8sClient.Patch(ctx, cb, patch)).To(Succeed())
		g.Eventually(func(g Gomega) {
			g.Expect(getBreaker(g, ns, "billing").Status.ExposedAs).To(Equal("billing-v2." + ns + ".svc.corp.example"))
			err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "payments"}, &corev1.Service{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "the old name's Service is gone: %v", err)
		}).Should(Succeed())
		status, _ := hostCall(g, px.URL, "payments."+ns, "/pay")
		g.Expect(status).To(Equal(404))

		cb = getBreaker(g, ns, "billing")
		patch = client.MergeFrom(cb.DeepCopy())
		cb.Spec.Expose = nil
		g.Expect(k8sClient.Patch(ctx, cb, patch)).To(Succeed())
		g.Eventually(func(g Gomega) {
			st := getBreaker(g, ns, "billing").Status
			g.Expect(st.ExposedAs).To(BeEmpty())
			g.Expect(meta.FindStatusCondition(st.Conditions, cbv1.ConditionExposed)).To(BeNil())
			err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "billing-v2"}, &corev1.Service{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "deleted: %v", err)
		}).Should(Succeed())
		status, _ = hostCall(g, px.URL, "billing-v2."+ns, "/pay")
		g.Expect(status).To(Equal(404))
	})

	t.Run("a name that cannot be a Service's is refused with a reason", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(k8sClient.Create(ctx, exposed("v1.inventory", withExpose("")))).To(Succeed())
		g.Eventually(func(g Gomega) {
			c := exposedCondition(g, ns, "v1.inventory")
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(controller.ReasonInvalidServiceName))
		}).Should(Succeed())
		g.Expect(meta.IsStatusConditionTrue(getBreaker(g, ns, "v1.inventory").Status.Conditions, cbv1.ConditionReady)).To(BeTrue(),
			"the breaker itself serves")
	})
}
