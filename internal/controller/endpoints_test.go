package controller_test

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/testhosts"
)

// testHosts are n test hosts in a network namespace of the test's own,
// each serving HTTP on port 8080 at its IPv4 address, host 0 at its IPv6
// one too, counting calls and failing on command.
type testHosts struct {
	*testhosts.Hosts
	hits    []atomic.Int32
	failing []atomic.Bool
}

func newTestHosts(t *testing.T, n int) *testHosts {
	hosts, err := testhosts.New(n)
	if err != nil {
		t.Skipf("no test hosts (EndpointSlices may not hold loopback addresses): %v", err)
	}
	t.Cleanup(hosts.Close)
	h := &testHosts{Hosts: hosts, hits: make([]atomic.Int32, n), failing: make([]atomic.Bool, n)}
	for i := range n {
		addrs := []netip.Addr{hosts.IPv4(i)}
		if i == 0 {
			addrs = append(addrs, hosts.IPv6(0))
		}
		for _, a := range addrs {
			l, err := hosts.Listen(netip.AddrPortFrom(a, 8080))
			NewWithT(t).Expect(err).NotTo(HaveOccurred())
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h.hits[i].Add(1)
				if h.failing[i].Load() {
					w.WriteHeader(http.StatusInternalServerError)
					return
				}
				_, _ = io.WriteString(w, r.Host)
			}), ReadHeaderTimeout: 10 * time.Second}
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(func() { _ = srv.Close() })
		}
	}
	return h
}

func (h *testHosts) counts() []int32 {
	out := make([]int32, len(h.hits))
	for i := range h.hits {
		out[i] = h.hits[i].Swap(0)
	}
	return out
}

func (h *testHosts) endpoint(i int) discoveryv1.Endpoint {
	e := endpointAt(h.IPv4(i).String())
	e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: "api-" + string(rune('a'+i))}
	return e
}

// createAPIService creates Service api: port "http" 80 (its endpoints'
// port "http" is 8080: the numbers differ, as they may) and "admin" 9090.
func createAPIService(t *testing.T, namespace string) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "api"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(9999)}, {Name: "admin", Port: 9090}}},
	}
	NewWithT(t).Expect(k8sClient.Create(context.Background(), svc)).To(Succeed())
}

func serviceBreaker(namespace, name string, port intstr.IntOrString, mutate ...func(*cbv1.CircuitBreaker)) *cbv1.CircuitBreaker {
	return newCircuitBreaker(namespace, name, append([]func(*cbv1.CircuitBreaker){func(cb *cbv1.CircuitBreaker) {
		cb.Spec.Upstream = cbv1.Upstream{Service: &cbv1.ServiceUpstream{Name: "api", Port: port}}
		cb.Spec.RecoveryTimeout = &metav1.Duration{Duration: 2 * time.Minute}
	}}, mutate...)...)
}

func endpointsOf(g Gomega, namespace, name string) cbv1.EndpointsStatus {
	e := getBreaker(g, namespace, name).Status.Endpoints
	g.Expect(e).NotTo(BeNil())
	return *e
}

// Calls to a Service upstream go to its endpoints, balanced per call over
// one keep-alive connection, at the slice's port of the Service port's
// name; an endpoint removed from the slice gets none of the next calls.
func TestServiceUpstreamsBalanceOverTheirEndpoints(t *testing.T) {
	g := NewWithT(t)
	hosts := newTestHosts(t, 3)
	ns := newNamespace(t)
	createAPIService(t, ns)
	writeSlice(t, ns, "api", "a", hosts.endpoint(0), hosts.endpoint(1), hosts.endpoint(2))
	h := startManager(t, ns, controller.Options{})
	px := proxyFor(t, h)
	ctx := context.Background()
	g.Expect(k8sClient.Create(ctx, serviceBreaker(ns, "by-name", intstr.FromString("http")))).To(Succeed())
	g.Expect(k8sClient.Create(ctx, serviceBreaker(ns, "by-number", intstr.FromInt32(80)))).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(endpointsOf(g, ns, "by-name").Summary).To(Equal("3/3"))
		g.Expect(endpointsOf(g, ns, "by-number").Summary).To(Equal("3/3"))
	}).Should(Succeed())

	oneConn := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	calls := func(name string, n int) {
		for range n {
			resp, err := oneConn.Get(px.URL + "/" + ns + "/" + name + "/x")
			g.Expect(err).NotTo(HaveOccurred())
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			g.Expect(resp.StatusCode).To(Equal(200))
			g.Expect(string(body)).To(Equal("api."+ns+".svc.cluster.local:80"), "the Host is the Service's name")
		}
	}
	calls("by-name", 900)
	g.Expect(hosts.counts()).To(HaveEach(BeNumerically("~", 300, 100)), "900 calls, 3 endpoints, one connection")
	calls("by-number", 30)
	g.Expect(hosts.counts()).To(HaveEach(BeNumerically(">", 0)), "a numbered port routes too")

	writeSlice(t, ns, "api", "a", hosts.endpoint(0), hosts.endpoint(2))
	g.Eventually(func(g Gomega) { g.Expect(endpointsOf(g, ns, "by-name").Summary).To(Equal("2/2")) }).Should(Succeed())
	calls("by-name", 300)
	got := hosts.counts()
	g.Expect(got[1]).To(BeZero(), "the removed endpoint gets none of the next calls")
	g.Expect(got[0] + got[2]).To(Equal(int32(300)))
}

// The Service's ports and the endpoints' states decide where calls go: a
// port the Service lacks is PortNotFound; an IPv6 slice is served; while
// no endpoint is ready the serving and terminating ones are used; with
// none usable the breaker opens at once (NoReadyEndpoints) and dials
// nothing, and one back serves within moments, though recoveryTimeout is
// two minutes.
func TestServiceUpstreamEndpointRules(t *testing.T) {
	g := NewWithT(t)
	hosts := newTestHosts(t, 2)
	ns := newNamespace(t)
	createAPIService(t, ns)
	h := startManager(t, ns, controller.Options{})
	px := proxyFor(t, h)
	ctx := context.Background()
	route := px.URL + "/" + ns + "/api/x"

	g.Expect(k8sClient.Create(ctx, serviceBreaker(ns, "missing-port", intstr.FromString("grpc")))).To(Succeed())
	g.Eventually(func(g Gomega) {
		ready := meta.FindStatusCondition(getBreaker(g, ns, "missing-port").Status.Conditions, cbv1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(ready.Reason).To(Equal(controller.ReasonPortNotFound))
	}).Should(Succeed())

	// A Service that has never had endpoints: open at once, no dial.
	g.Expect(k8sClient.Create(ctx, serviceBreaker(ns, "api", intstr.FromString("http")))).To(Succeed())
	g.Eventually(func(g Gomega) {
		st := getBreaker(g, ns, "api").Status
		g.Expect(st.State).To(Equal(cbv1.StateOpen))
		g.Expect(st.LastOpenReason).To(Equal("NoReadyEndpoints"))
	}).Should(Succeed())
	resp, err := http.Get(route)
	g.Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(503))
	g.Expect(resp.Header.Get("X-Circuit-Breaker-State")).To(Equal("open"))
	g.Expect(resp.Header.Get("Retry-After")).NotTo(BeEmpty())

	// An IPv6 endpoint comes: the breaker probes at once, and serves.
	v6 := endpointAt(hosts.IPv6(0).String())
	writeSlice(t, ns, "api", "v6", v6)
	g.Eventually(func() int { return call(g, route) }, 5*time.Second, 50*time.Millisecond).Should(Equal(200))
	g.Eventually(func(g Gomega) { g.Expect(getBreaker(g, ns, "api").Status.State).To(Equal(cbv1.StateClosed)) }).Should(Succeed())
	g.Expect(hosts.counts()[0]).To(BeNumerically(">", 0))

	// None ready, one serving and terminating: that one is used. (Written
	// before the ready IPv6 endpoint goes, so the set is never empty.)
	terminating := hosts.endpoint(1)
	terminating.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	notServing := hosts.endpoint(0)
	notServing.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(true)}
	writeSlice(t, ns, "api", "a", terminating, notServing)
	writeSlice(t, ns, "api", "v6")
	g.Eventually(func() []int32 {
		hosts.counts()
		for range 5 {
			call(g, route)
		}
		return hosts.counts()
	}, 5*time.Second, 50*time.Millisecond).Should(Equal([]int32{0, 5}), "the serving, terminating endpoint, and not the other")
	g.Expect(getBreaker(g, ns, "api").Status.State).To(Equal(cbv1.StateClosed))

	// Nothing usable: open again at once, and nothing is dialled.
	writeSlice(t, ns, "api", "a", notServing)
	g.Eventually(func(g Gomega) {
		st := getBreaker(g, ns, "api").Status
		g.Expect(st.State).To(Equal(cbv1.StateOpen))
		g.Expect(st.LastOpenReason).To(Equal("NoReadyEndpoints"))
		g.Expect(st.Endpoints.Summary).To(Equal("0/0"))
	}).Should(Succeed())
	for range 5 {
		g.Expect(call(g, route)).To(Equal(503))
	}
	g.Expect(hosts.counts()).To(Equal([]int32{0, 0}), "no dial")
}

// A failing endpoint among healthy ones is ejected; the breaker, which
// counts every call, stays Closed, and the status lists the ejected one.
func TestFailingEndpointIsEjectedBelowTheBreaker(t *testing.T) {
	g := NewWithT(t)
	hosts := newTestHosts(t, 3)
	ns := newNamespace(t)
	createAPIService(t, ns)
	writeSlice(t, ns, "api", "a", hosts.endpoint(0), hosts.endpoint(1), hosts.endpoint(2))
	h := startManager(t, ns, controller.Options{})
	px := proxyFor(t, h)
	g.Expect(k8sClient.Create(context.Background(), serviceBreaker(ns, "api", intstr.FromString("http"), func(cb *cbv1.CircuitBreaker) {
		cb.Spec.FailureThreshold = 5
		cb.Spec.EndpointEjection = &cbv1.EndpointEjection{ConsecutiveFailures: 3}
	}))).To(Succeed())
	g.Eventually(func(g Gomega) { g.Expect(endpointsOf(g, ns, "api").Summary).To(Equal("3/3")) }).Should(Succeed())
	hosts.failing[1].Store(true)
	route := px.URL + "/" + ns + "/api/x"
	for range 60 {
		call(g, route)
	}
	g.Eventually(func(g Gomega) {
		e := endpointsOf(g, ns, "api")
		g.Expect(e.Ejected).To(Equal(int32(1)))
		g.Expect(e.Summary).To(Equal("2/3"))
		g.Expect(e.EjectedEndpoints).To(ConsistOf(SatisfyAll(
			HaveField("Address", hosts.IPv4(1).String()), HaveField("Pod", "api-b"))))
	}).Should(Succeed())
	g.Expect(getBreaker(g, ns, "api").Status.State).To(Equal(cbv1.StateClosed), "the breaker stays Closed")
	g.Expect(seriesValue(g, h, "circuitbreaker_endpoint_ejections_total", ns, nil)).To(Equal(1.0))
	g.Expect(seriesValue(g, h, "circuitbreaker_endpoints", ns, map[string]string{"state": "ejected"})).To(Equal(1.0))
	g.Expect(seriesValue(g, h, "circuitbreaker_endpoints", ns, map[string]string{"state": "ready"})).To(Equal(3.0))
	hosts.counts()
	for range 60 {
		g.Expect(call(g, route)).To(Equal(200))
	}
	g.Expect(hosts.counts()[1]).To(BeZero(), "the ejected endpoint gets no calls")
}

// seriesValue is the value of metric's series for namespace's breaker
// "api" with the extra labels, from the harness's registry.
func seriesValue(g Gomega, h *harness, metric, namespace string, extra map[string]string) float64 {
	families, err := h.metrics.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() != metric {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			want := map[string]string{"namespace": namespace, "name": "api"}
			for k, v := range extra {
				want[k] = v
			}
			for _, l := range m.GetLabel() {
				if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// A replica that starts while a breaker is Open for NoReadyEndpoints, its
// recovery timeout long passed, keeps it Open: it learns that the Service
// still has no endpoint before anything can move the breaker to HalfOpen
// (which would only open it again: two transitions, two Events and a
// status write per breaker on every restart).
func TestRestartKeepsNoReadyEndpointsOpenWithoutFlapping(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	createAPIService(t, ns)
	ctx := context.Background()
	g.Expect(k8sClient.Create(ctx, serviceBreaker(ns, "api", intstr.FromString("http")))).To(Succeed())
	cb := getBreaker(g, ns, "api")
	patch := client.MergeFrom(cb.DeepCopy())
	opened := time.Now().Add(-time.Hour)
	cb.Status = cbv1.CircuitBreakerStatus{
		State: cbv1.StateOpen, LastOpenReason: "NoReadyEndpoints",
		LastTransitionTime: &metav1.Time{Time: opened},
		OpenUntil:          &metav1.Time{Time: opened.Add(2 * time.Minute)},
		History: []cbv1.TransitionRecord{{Time: metav1.NewMicroTime(opened), From: cbv1.StateClosed, To: cbv1.StateOpen,
			Reason: "the upstream Service has no ready endpoint", OpenReason: "NoReadyEndpoints"}},
	}
	g.Expect(k8sClient.Status().Patch(ctx, cb, patch)).To(Succeed())

	startManager(t, ns, controller.Options{})
	g.Eventually(func(g Gomega) {
		st := getBreaker(g, ns, "api").Status
		g.Expect(st.ObservedGeneration).NotTo(BeZero(), "the manager wrote the status")
		g.Expect(st.State).To(Equal(cbv1.StateOpen))
		g.Expect(st.History).To(HaveLen(1), "no HalfOpen and Open again: %v", st.History)
	}).Should(Succeed())
}
