package controller_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"k8s.io/utils/clock"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/restapi"
)

func post(g Gomega, url string) (int, map[string]any) {
	resp, err := http.Post(url, "application/json", nil)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	g.Expect(json.Unmarshal(raw, &body)).To(Succeed(), string(raw))
	return resp.StatusCode, body
}

// A reset through the API goes through the annotation: it is recorded on
// the resource and handled by the controller before the API answers.
func TestAPIResetRoundTripsThroughTheAnnotation(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{})
	srv := httptest.NewServer(restapi.New(h.Registry, k8sClient, clock.RealClock{}, restapi.Options{Log: logr.Discard()}))
	defer srv.Close()
	openBreaker(g, h, ns, "order-api")

	status, body := post(g, srv.URL+"/api/circuit-breakers/"+ns+"/order-api/reset")
	g.Expect(status).To(Equal(http.StatusOK), "%v", body)
	g.Expect(body).To(Equal(map[string]any{"success": true, "message": "Circuit breaker '" + ns + "/order-api' reset successfully"}))

	// Handled before the answer: no waiting needed.
	cb := getBreaker(g, ns, "order-api")
	g.Expect(cb.Status.State).To(Equal(cbv1.StateClosed))
	g.Expect(cb.Annotations).To(HaveKey(cbv1.ResetAnnotation))
	g.Expect(cb.Status.LastHandledReset).To(Equal(cb.Annotations[cbv1.ResetAnnotation]))
	b, _ := h.Registry.Get(breaker.NewKey(ns, "order-api"))
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed))
	g.Eventually(func() []string { return events(g, ns, "order-api") }).Should(
		ContainElement(HavePrefix("Reset: breaker reset to Closed by annotation circuitbreaker.io/reset=")))
	g.Expect(cb.Status.History).NotTo(BeEmpty())
	last := cb.Status.History[len(cb.Status.History)-1]
	g.Expect(last.From).To(Equal(cbv1.StateOpen))
	g.Expect(last.To).To(Equal(cbv1.StateClosed))
}

func TestAPIResetAnswersWithAnErrorWhenNotHandled(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	// A registry that knows the breaker, but no controller to handle the annotation.
	registry := breaker.NewRegistry(clock.RealClock{})
	registry.Upsert(breaker.NewKey(ns, "orphan"), "uid", breaker.Settings{}, nil)
	srv := httptest.NewServer(restapi.New(registry, k8sClient, clock.RealClock{}, restapi.Options{ResetTimeout: 500 * time.Millisecond, Log: logr.Discard()}))
	defer srv.Close()

	status, body := post(g, srv.URL+"/api/circuit-breakers/"+ns+"/orphan/reset")
	g.Expect(status).To(Equal(http.StatusNotFound), "no resource behind it")
	g.Expect(body["error"]).To(Equal("Circuit breaker '" + ns + "/orphan' not found"))

	g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "orphan"))).To(Succeed())
	status, body = post(g, srv.URL+"/api/circuit-breakers/"+ns+"/orphan/reset")
	g.Expect(status).To(Equal(http.StatusGatewayTimeout))
	g.Expect(body["success"]).To(BeFalse())
	g.Expect(body["error"]).To(MatchRegexp(
		`^Circuit breaker '.*/orphan': reset requested \(circuitbreaker.io/reset=\d+\) but not handled by the controller within 500ms`))
	g.Expect(getBreaker(g, ns, "orphan").Annotations).To(HaveKey(cbv1.ResetAnnotation), "the request is recorded on the resource")
}

// History stays bounded in the status under a flapping breaker.
func TestStatusHistoryStaysAtTen(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{})
	g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "flappy", withThreshold(1), withRecovery(time.Hour)))).To(Succeed())
	b := liveBreaker(g, h, ns, "flappy")
	for i := range 8 { // 16 transitions: Closed→Open, then a reset
		failCalls(g, b, 1)
		b.Reset(string(rune('a'+i)), "test reset")
	}
	g.Eventually(func(g Gomega) {
		st := getBreaker(g, ns, "flappy").Status
		g.Expect(st.History).To(HaveLen(10))
		g.Expect(st.History[9].Reason).To(Equal("test reset"))
		g.Expect(st.History[8].Reason).To(Equal("1 consecutive failure, last: 503"))
	}).Should(Succeed())
}
