package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
)

func newCircuitBreaker(namespace, name string, mutate ...func(*cbv1.CircuitBreaker)) *cbv1.CircuitBreaker {
	cb := &cbv1.CircuitBreaker{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: cbv1.CircuitBreakerSpec{
			Upstream: cbv1.Upstream{Service: &cbv1.ServiceUpstream{Name: "order-api", Port: intstr.FromInt32(8080)}},
		},
	}
	for _, m := range mutate {
		m(cb)
	}
	return cb
}

func withThreshold(n int32) func(*cbv1.CircuitBreaker) {
	return func(cb *cbv1.CircuitBreaker) { cb.Spec.FailureThreshold = n }
}

func withRecovery(d time.Duration) func(*cbv1.CircuitBreaker) {
	return func(cb *cbv1.CircuitBreaker) { cb.Spec.RecoveryTimeout = &metav1.Duration{Duration: d} }
}

// liveBreaker waits for the registry to hold the breaker and returns it.
func liveBreaker(g Gomega, r *harness, namespace, name string) *breaker.Breaker {
	var b *breaker.Breaker
	g.Eventually(func() bool {
		var ok bool
		b, ok = r.Registry.Get(breaker.NewKey(namespace, name))
		return ok
	}).Should(BeTrue())
	return b
}

func failCalls(g Gomega, b *breaker.Breaker, n int) {
	for range n {
		tk, err := b.Allow()
		g.Expect(err).NotTo(HaveOccurred())
		tk.Failure(breaker.Failure{StatusCode: 503})
	}
}

// openBreaker creates a breaker that stays Open for an hour, trips it with
// two failures and waits for the status to say Open.
func openBreaker(g Gomega, h *harness, namespace, name string) *breaker.Breaker { //nolint:unparam // tests name what they open
	g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(namespace, name, withThreshold(2), withRecovery(time.Hour)))).To(Succeed())
	b := liveBreaker(g, h, namespace, name)
	failCalls(g, b, 2)
	g.Eventually(func(g Gomega) {
		g.Expect(getBreaker(g, namespace, name).Status.State).To(Equal(cbv1.StateOpen))
	}).Should(Succeed())
	return b
}

// annotateReset sets the reset annotation, as kubectl annotate does.
func annotateReset(g Gomega, namespace, name, value string) {
	cb := getBreaker(g, namespace, name)
	patch := client.MergeFrom(cb.DeepCopy())
	if cb.Annotations == nil {
		cb.Annotations = map[string]string{}
	}
	cb.Annotations[cbv1.ResetAnnotation] = value
	g.Expect(k8sClient.Patch(context.Background(), cb, patch)).To(Succeed())
}

// tableRow returns the columns `kubectl get cb` prints for one breaker, as
// the API server's Table rendering gives them.
func tableRow(g Gomega, namespace, name string, wide bool) map[string]any { //nolint:unparam // tests name what they read
	httpClient, err := rest.HTTPClientFor(restConfig)
	g.Expect(err).NotTo(HaveOccurred())
	url := fmt.Sprintf("%s/apis/circuitbreaker.io/v1alpha1/namespaces/%s/circuitbreakers/%s", strings.TrimSuffix(restConfig.Host, "/"), namespace, name)
	req, err := http.NewRequest(http.MethodGet, url, nil)
	g.Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := httpClient.Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK), string(body))
	var table metav1.Table
	g.Expect(json.Unmarshal(body, &table)).To(Succeed())
	g.Expect(table.Rows).To(HaveLen(1))
	row := map[string]any{}
	for i, col := range table.ColumnDefinitions {
		if col.Priority == 0 || wide {
			row[col.Name] = table.Rows[0].Cells[i]
		}
	}
	return row
}

// bumpAndObserve changes the spec (a new generation) and waits until the
// controller has reconciled it: a barrier after which everything the
// controller was going to do with the earlier generation is done.
func bumpAndObserve(g Gomega, namespace, name string) { //nolint:unparam // tests name what they change
	cb := getBreaker(g, namespace, name)
	patch := client.MergeFrom(cb.DeepCopy())
	cb.Spec.SuccessThreshold++
	g.Expect(k8sClient.Patch(context.Background(), cb, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, namespace, name)
		g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
	}).Should(Succeed())
}

func TestCreateIsClosedAndObserved(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	r := startManager(t, ns, controller.Options{})
	g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "order-api"))).To(Succeed())

	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "order-api")
		g.Expect(cb.Status.State).To(Equal(cbv1.StateClosed))
		g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
		g.Expect(cb.Status.FailureCount).To(BeZero())
		g.Expect(cb.Status.Upstream).To(Equal("http://order-api."+ns+".svc.cluster.local:8080"), "the Service by name: its endpoints are dialled by address")
		ready := meta.FindStatusCondition(cb.Status.Conditions, cbv1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(ready.Reason).To(Equal(controller.ReasonActive))
	}).Should(Succeed())

	cb := getBreaker(g, ns, "order-api")
	g.Expect(cb.Spec.FailureThreshold).To(Equal(int32(5)), "the schema fills in defaults")
	g.Expect(cb.Spec.RecoveryTimeout.Duration).To(Equal(30 * time.Second))
	g.Expect(cb.Spec.FailureStatusCodes).To(Equal([]string{"5xx"}))
	g.Expect(cb.Spec.Upstream.Service.Scheme).To(Equal("http"))
	b := liveBreaker(g, r, ns, "order-api")
	g.Expect(b.Snapshot().Settings).To(Equal(breaker.Settings{
		FailureThreshold: 5, RecoveryTimeout: 30 * time.Second, HalfOpenMaxRequests: 1, SuccessThreshold: 1,
	}))

	g.Expect(tableRow(g, ns, "order-api", false)).To(SatisfyAll(
		HaveKeyWithValue("Name", "order-api"),
		HaveKeyWithValue("State", "Closed"),
		HaveKeyWithValue("Failures", BeNumerically("==", 0)),
		HaveKeyWithValue("Threshold", BeNumerically("==", 5)),
		HaveKeyWithValue("Timeout", "30s"),
		HaveKey("Age"),
		Not(HaveKey("Upstream")),
	))
	g.Expect(tableRow(g, ns, "order-api", true)).To(HaveKeyWithValue("Upstream", "http://order-api."+ns+".svc.cluster.local:8080"))
}

func TestTrafficTransitionsReachTheStatus(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	r := startManager(t, ns, controller.Options{})
	g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "order-api", withThreshold(3), withRecovery(2*time.Second)))).To(Succeed())
	b := liveBreaker(g, r, ns, "order-api")

	failCalls(g, b, 2)
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "order-api")
		g.Expect(cb.Status.FailureCount).To(Equal(int32(2)))
		g.Expect(cb.Status.LastFailureTime).NotTo(BeNil())
	}).Should(Succeed(), "counts are flushed without a transition")

	failCalls(g, b, 1)
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "order-api")
		g.Expect(cb.Status.State).To(Equal(cbv1.StateOpen))
		g.Expect(cb.Status.OpenUntil).NotTo(BeNil())
	}).Should(Succeed(), "a transition reaches the status")
	g.Expect(tableRow(g, ns, "order-api", false)).To(SatisfyAll(
		HaveKeyWithValue("State", "Open"),
		HaveKeyWithValue("Failures", BeNumerically("==", 3)),
		HaveKeyWithValue("Threshold", BeNumerically("==", 3)),
		HaveKeyWithValue("Timeout", "2s"),
	))

	// With no traffic at all, the status still moves to HalfOpen once probing may start.
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "order-api")
		g.Expect(cb.Status.State).To(Equal(cbv1.StateHalfOpen))
		g.Expect(cb.Status.OpenUntil).To(BeNil())
	}).Should(Succeed())

	probe, err := b.Allow()
	g.Expect(err).NotTo(HaveOccurred())
	probe.Success()
	g.Eventually(func(g Gomega) {
		g.Expect(getBreaker(g, ns, "order-api").Status.State).To(Equal(cbv1.StateClosed))
	}).Should(Succeed())

	g.Eventually(func() []string { return events(g, ns, "order-api") }).Should(ContainElements(
		"Opened: 3 consecutive failures, last: 503",
		"HalfOpened: recovery timeout of 2s elapsed",
		"Closed: 1 successful probe in a row",
	))
}

func TestResetAnnotationResetsOncePerValue(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	r := startManager(t, ns, controller.Options{})
	ctx := context.Background()
	b := openBreaker(g, r, ns, "order-api")

	annotate := func(value string) { annotateReset(g, ns, "order-api", value) }
	annotate("1764176400")
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "order-api")
		g.Expect(cb.Status.State).To(Equal(cbv1.StateClosed))
		g.Expect(cb.Status.FailureCount).To(BeZero())
		g.Expect(cb.Status.LastHandledReset).To(Equal("1764176400"))
	}).Should(Succeed())
	g.Eventually(func() []string { return events(g, ns, "order-api") }).Should(
		ContainElement("Reset: breaker reset to Closed by annotation circuitbreaker.io/reset=1764176400"))
	bumpAndObserve(g, ns, "order-api")
	g.Expect(countPrefix(events(g, ns, "order-api"), "Reset:")).To(Equal(1), "one value resets once, however often it is reconciled")

	// Open it again; the same annotation value seen again (a spec change
	// triggers a reconcile, and so does another annotation) must not reset it.
	failCalls(g, b, 2)
	g.Eventually(func(g Gomega) {
		g.Expect(getBreaker(g, ns, "order-api").Status.State).To(Equal(cbv1.StateOpen))
	}).Should(Succeed())
	cb := getBreaker(g, ns, "order-api")
	patch := client.MergeFrom(cb.DeepCopy())
	cb.Spec.SuccessThreshold = 2
	cb.Annotations["unrelated"] = "touch"
	g.Expect(k8sClient.Patch(ctx, cb, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "order-api")
		g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
	}).Should(Succeed())
	g.Expect(getBreaker(g, ns, "order-api").Status.State).To(Equal(cbv1.StateOpen), "the reconcile of the new generation did not reset")
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateOpen))
	g.Expect(countPrefix(events(g, ns, "order-api"), "Reset:")).To(Equal(1))

	// A new value resets again.
	annotate("1764176500")
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "order-api")
		g.Expect(cb.Status.State).To(Equal(cbv1.StateClosed))
		g.Expect(cb.Status.LastHandledReset).To(Equal("1764176500"))
	}).Should(Succeed())
}

func TestSpecChangeKeepsState(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	r := startManager(t, ns, controller.Options{})
	ctx := context.Background()
	b := openBreaker(g, r, ns, "order-api")

	cb := getBreaker(g, ns, "order-api")
	patch := client.MergeFrom(cb.DeepCopy())
	cb.Spec.FailureThreshold = 7
	g.Expect(k8sClient.Patch(ctx, cb, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, ns, "order-api")
		g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
		g.Expect(cb.Status.State).To(Equal(cbv1.StateOpen))
	}).Should(Succeed())
	g.Expect(b.Snapshot().Settings.FailureThreshold).To(Equal(uint32(7)))
	g.Expect(liveBreaker(g, r, ns, "order-api")).To(BeIdenticalTo(b))
}

func TestDeleteRemovesTheBreaker(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	r := startManager(t, ns, controller.Options{})
	ctx := context.Background()
	cb := newCircuitBreaker(ns, "order-api")
	g.Expect(k8sClient.Create(ctx, cb)).To(Succeed())
	liveBreaker(g, r, ns, "order-api")
	g.Expect(k8sClient.Delete(ctx, cb)).To(Succeed())
	g.Eventually(func() bool {
		_, ok := r.Registry.Get(breaker.NewKey(ns, "order-api"))
		return ok
	}).Should(BeFalse())
}

func TestRestoreAfterRestart(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	ctx := context.Background()
	first := startManager(t, ns, controller.Options{})
	g.Expect(k8sClient.Create(ctx, newCircuitBreaker(ns, "open", withThreshold(2), withRecovery(time.Hour)))).To(Succeed())
	g.Expect(k8sClient.Create(ctx, newCircuitBreaker(ns, "counting", withThreshold(5)))).To(Succeed())
	failCalls(g, liveBreaker(g, first, ns, "open"), 2)
	failCalls(g, liveBreaker(g, first, ns, "counting"), 3)
	g.Eventually(func(g Gomega) {
		g.Expect(getBreaker(g, ns, "open").Status.State).To(Equal(cbv1.StateOpen))
		g.Expect(getBreaker(g, ns, "counting").Status.FailureCount).To(Equal(int32(3)))
	}, 3*time.Second).Should(Succeed())
	openUntil := getBreaker(g, ns, "open").Status.OpenUntil

	// A second manager with an empty registry stands in for a restart.
	second := startManager(t, ns, controller.Options{})
	restored := liveBreaker(g, second, ns, "open")
	g.Expect(restored).NotTo(BeIdenticalTo(liveBreaker(g, first, ns, "open")))
	s := restored.Snapshot()
	g.Expect(s.State).To(Equal(breaker.StateOpen))
	g.Expect(s.OpenUntil).To(BeTemporally("==", openUntil.Time))
	_, err := restored.Allow()
	g.Expect(err).To(MatchError(breaker.ErrOpen))

	counting := liveBreaker(g, second, ns, "counting")
	g.Expect(counting.Snapshot().Failures).To(Equal(uint32(3)))
	failCalls(g, counting, 2)
	g.Expect(counting.Snapshot().State).To(Equal(breaker.StateOpen))
}

func TestURLUpstreams(t *testing.T) {
	withURL := func(cb *cbv1.CircuitBreaker) {
		cb.Spec.Upstream = cbv1.Upstream{URL: "https://api.example.com/v1"}
	}
	tests := []struct {
		name    string
		allow   bool
		status  metav1.ConditionStatus
		reason  string
		message string
		live    bool
	}{
		{name: "refused without the flag", status: metav1.ConditionFalse, reason: controller.ReasonUpstreamNotAllowed,
			message: "spec.upstream.url is refused: the manager runs without --allow-url-upstreams"},
		{name: "allowed with the flag", allow: true, status: metav1.ConditionTrue, reason: controller.ReasonActive,
			message: "forwarding to https://api.example.com/v1", live: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			r := startManager(t, ns, controller.Options{AllowURLUpstreams: tt.allow})
			g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "ext", withURL))).To(Succeed())
			g.Eventually(func(g Gomega) {
				cb := getBreaker(g, ns, "ext")
				ready := meta.FindStatusCondition(cb.Status.Conditions, cbv1.ConditionReady)
				g.Expect(ready).NotTo(BeNil())
				g.Expect(ready.Status).To(Equal(tt.status))
				g.Expect(ready.Reason).To(Equal(tt.reason))
				g.Expect(ready.Message).To(Equal(tt.message))
				g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
			}).Should(Succeed())
			_, ok := r.Registry.Get(breaker.NewKey(ns, "ext"))
			g.Expect(ok).To(Equal(tt.live))
		})
	}
}

func TestInvalidSpecsAreRefused(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct {
		name   string
		mutate func(*cbv1.CircuitBreaker)
		spec   map[string]any // raw spec, for values the Go types cannot express
		want   []string
	}{
		{name: "failureThreshold 0", spec: map[string]any{"failureThreshold": 0},
			want: []string{"spec.failureThreshold", "allowed only with failureRate"}},
		{name: "failureThreshold over 10000", mutate: withThreshold(10001),
			want: []string{"spec.failureThreshold", "should be less than or equal to 10000"}},
		{name: "both service and url", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Upstream.URL = "https://api.example.com" },
			want: []string{"spec.upstream", "exactly one of upstream.service or upstream.url must be set"}},
		{name: "neither service nor url", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Upstream = cbv1.Upstream{} },
			want: []string{"spec.upstream", "exactly one of upstream.service or upstream.url must be set"}},
		{name: "recoveryTimeout soon", spec: map[string]any{"recoveryTimeout": "soon"},
			want: []string{"spec.recoveryTimeout", "should match"}},
		{name: "recoveryTimeout under a second", mutate: withRecovery(500 * time.Millisecond),
			want: []string{"spec.recoveryTimeout", "recoveryTimeout must be at least 1s"}},
		{name: "requestTimeout zero", spec: map[string]any{"requestTimeout": "0s"},
			want: []string{"spec.requestTimeout", "requestTimeout must be greater than 0"}},
		{name: "halfOpenMaxRequests 0", spec: map[string]any{"halfOpenMaxRequests": 0},
			want: []string{"spec.halfOpenMaxRequests", "should be greater than or equal to 1"}},
		{name: "successThreshold 0", spec: map[string]any{"successThreshold": 0},
			want: []string{"spec.successThreshold", "should be greater than or equal to 1"}},
		{name: "status code pattern", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.FailureStatusCodes = []string{"5xx", "abc"} },
			want: []string{"spec.failureStatusCodes[1]", "should match"}},
		{name: "status code range backwards", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.FailureStatusCodes = []string{"504-500"} },
			want: []string{"spec.failureStatusCodes", "a status code range must run from low to high"}},
		{name: "empty status code list", spec: map[string]any{"failureStatusCodes": []any{}},
			want: []string{"spec.failureStatusCodes", "should have at least 1 items"}},
		{name: "url not http", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Upstream = cbv1.Upstream{URL: "ftp://files.example.com"} },
			want: []string{"spec.upstream.url", "upstream.url must be an absolute http or https URL"}},
		{name: "service scheme", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Upstream.Service.Scheme = "tcp" },
			want: []string{"spec.upstream.service.scheme", "Unsupported value"}},
		{name: "service port 0", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Upstream.Service.Port = intstr.FromInt32(0) },
			want: []string{"spec.upstream.service.port", "upstream.service.port must be a port number (1..65535) or a port name"}},
		{name: "service port name not a name", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Upstream.Service.Port = intstr.FromString("Web_Port") },
			want: []string{"spec.upstream.service.port", "upstream.service.port must be a port number (1..65535) or a port name"}},
		{name: "endpointEjection percent 0", spec: map[string]any{"endpointEjection": map[string]any{"maxEjectionPercent": 0}},
			want: []string{"spec.endpointEjection.maxEjectionPercent", "should be greater than or equal to 1"}},
		{name: "endpointEjection max below base", spec: map[string]any{"endpointEjection": map[string]any{"baseEjectionTime": "2m", "maxEjectionTime": "1m"}},
			want: []string{"spec.endpointEjection.maxEjectionTime", "maxEjectionTime must be at least baseEjectionTime"}},
		{name: "h2c to an https Service", mutate: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.Upstream.Service.Scheme, cb.Spec.Upstream.Protocol = "https", cbv1.ProtocolH2C
		}, want: []string{"spec.upstream.protocol", "protocol h2c is HTTP/2 without TLS"}},
		{name: "h2c to an https URL", mutate: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.Upstream = cbv1.Upstream{URL: "https://api.example.com", Protocol: cbv1.ProtocolH2C}
		}, want: []string{"spec.upstream.protocol", "protocol h2c is HTTP/2 without TLS"}},
		{name: "protocol h3", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Upstream.Protocol = "h3" },
			want: []string{"spec.upstream.protocol", "Unsupported value"}},
		{name: "tls for an http Service", mutate: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.Upstream.TLS = &cbv1.UpstreamTLS{ServerName: "api.shop.svc"}
		}, want: []string{"spec.upstream.tls", "upstream.tls needs an https upstream"}},
		{name: "tls for an http URL", mutate: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.Upstream = cbv1.Upstream{URL: "http://api.example.com", TLS: &cbv1.UpstreamTLS{ServerName: "api.example.com"}}
		}, want: []string{"spec.upstream.tls", "upstream.tls needs an https upstream"}},
		{name: "tls serverName", mutate: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.Upstream.Service.Scheme = "https"
			cb.Spec.Upstream.TLS = &cbv1.UpstreamTLS{ServerName: "Not A Name"}
		}, want: []string{"spec.upstream.tls.serverName", "should match"}},
		{name: "tls caConfigMap without a name", mutate: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.Upstream.Service.Scheme = "https"
			cb.Spec.Upstream.TLS = &cbv1.UpstreamTLS{CAConfigMap: &cbv1.ConfigMapKey{}}
		}, want: []string{"spec.upstream.tls.caConfigMap.name", "should be at least 1 chars long"}},
		{name: "service name", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Upstream.Service.Name = "Order_API" },
			want: []string{"spec.upstream.service.name", "should match"}},
		{name: "fallback status code", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Fallback = &cbv1.Fallback{StatusCode: 99} },
			want: []string{"spec.fallback.statusCode", "should be greater than or equal to 200"}},
		{name: "requestTimeout over 5 minutes", spec: map[string]any{"requestTimeout": "6m"},
			want: []string{"spec.requestTimeout", "requestTimeout must be at most 5m"}},
		{name: "streamIdleTimeout under a second", spec: map[string]any{"streamIdleTimeout": "10ms"},
			want: []string{"spec.streamIdleTimeout", "streamIdleTimeout must be from 1s to 24h"}},
		{name: "maxConcurrentRequests 0", spec: map[string]any{"maxConcurrentRequests": 0},
			want: []string{"spec.maxConcurrentRequests", "should be greater than or equal to 1"}},
		{name: "fallback body over 8 KiB", mutate: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.Fallback = &cbv1.Fallback{Body: strings.Repeat("x", 8193)}
		}, want: []string{"spec.fallback.body", "may not be more than 8192 bytes"}},
		{name: "fallback content type", mutate: func(cb *cbv1.CircuitBreaker) { cb.Spec.Fallback = &cbv1.Fallback{ContentType: "<script>"} },
			want: []string{"spec.fallback.contentType", "should match"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			cb := newCircuitBreaker(ns, "bad", func(cb *cbv1.CircuitBreaker) {
				if tt.mutate != nil {
					tt.mutate(cb)
				}
			})
			var obj client.Object = cb
			if tt.spec != nil {
				obj = rawWithSpec(g, cb, tt.spec)
			}
			err := k8sClient.Create(context.Background(), obj)
			g.Expect(err).To(HaveOccurred())
			g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), err.Error())
			for _, w := range tt.want {
				g.Expect(err.Error()).To(ContainSubstring(w))
			}
			var stored cbv1.CircuitBreaker
			err = k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "bad"}, &stored)
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "nothing is stored")
		})
	}
}

// rawWithSpec returns cb as an unstructured object with spec fields set to
// values its Go type would omit or cannot hold.
func rawWithSpec(g Gomega, cb *cbv1.CircuitBreaker, spec map[string]any) *unstructured.Unstructured {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(cb)
	g.Expect(err).NotTo(HaveOccurred())
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(cbv1.GroupVersion.WithKind("CircuitBreaker"))
	for k, v := range spec {
		m["spec"].(map[string]any)[k] = v
	}
	return u
}
