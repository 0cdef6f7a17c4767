package controller_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	testingclock "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
)

// policyUpstream answers as told: "ok", "fail" (500), "slow" (200 after
// 300 ms), "busy" (503 with Retry-After: 120).
func policyUpstream(t *testing.T) (*httptest.Server, *atomic.Value, *atomic.Int64) {
	var mode atomic.Value
	var hits atomic.Int64
	mode.Store("ok")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		switch mode.Load().(string) {
		case "fail":
			w.WriteHeader(http.StatusInternalServerError)
		case "slow":
			time.Sleep(300 * time.Millisecond)
			_, _ = io.WriteString(w, "ok")
		case "busy":
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			_, _ = io.WriteString(w, "ok")
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &mode, &hits
}

// policyFixture is a manager with one URL breaker in front of a
// policyUpstream, and the breaker's route through the proxy.
type policyFixture struct {
	ns    string
	h     *harness
	cb    *cbv1.CircuitBreaker
	route string
	mode  *atomic.Value
	hits  *atomic.Int64
}

// startPolicy creates breaker name (shaped by spec) and waits until its
// route answers.
func startPolicy(t *testing.T, name string, threshold int32, recovery time.Duration, spec func(*cbv1.CircuitBreaker), hopts ...harnessOption) policyFixture {
	g := NewWithT(t)
	p := policyFixture{ns: newNamespace(t)}
	p.h = startManager(t, p.ns, controller.Options{AllowURLUpstreams: true}, hopts...)
	upstream, mode, hits := policyUpstream(t)
	p.mode, p.hits = mode, hits
	p.cb = urlBreaker(p.ns, name, upstream.URL, threshold, recovery)
	spec(p.cb)
	g.Expect(k8sClient.Create(context.Background(), p.cb)).To(Succeed())
	p.route = proxyFor(t, p.h).URL + "/" + p.ns + "/" + name + "/"
	g.Eventually(func() int { return call(g, p.route) }).Should(Equal(200))
	return p
}

// Each rule, driven by traffic through the proxy, reaches the status and an
// Event that names it with its figures.
func TestPolicyRulesReachStatusAndEvents(t *testing.T) {
	window := func(threshold, minimum int32) *cbv1.FailureRate {
		return &cbv1.FailureRate{Threshold: threshold, MinimumRequests: minimum, Window: &metav1.Duration{Duration: 10 * time.Second}}
	}
	cases := []struct {
		name  string
		spec  func(*cbv1.CircuitBreaker)
		calls []string // upstream modes, one call each
		// wantReason is status.lastOpenReason; wantEvent a part of the Opened Event.
		wantReason, wantEvent string
		wantOpens             int32
		check                 func(g Gomega, st cbv1.CircuitBreakerStatus)
	}{{
		name: "failure rate",
		spec: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.FailureThreshold = 100
			cb.Spec.FailureRate = window(50, 4)
		},
		calls:      []string{"ok", "fail", "ok", "fail"},
		wantReason: "FailureRate", wantEvent: "failure rate 50% of 4 calls in 10s >= 50%, last: 500", wantOpens: 1,
	}, {
		name: "slow calls",
		spec: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.FailureRate = window(100, 4)
			cb.Spec.SlowCall = &cbv1.SlowCall{DurationThreshold: metav1.Duration{Duration: 100 * time.Millisecond}, RateThreshold: 50}
		},
		calls:      []string{"ok", "slow", "ok", "slow"},
		wantReason: "SlowCallRate", wantEvent: "slow call rate 50% of 4 calls in 10s >= 50% (slower than 100ms)", wantOpens: 1,
	}, {
		name: "the upstream asking to retry after",
		spec: func(cb *cbv1.CircuitBreaker) {
			cb.Spec.FailureThreshold = 1
			cb.Spec.OpenDuration = &cbv1.OpenDuration{HonorRetryAfter: true, Max: &metav1.Duration{Duration: 10 * time.Minute}}
		},
		calls:      []string{"busy"},
		wantReason: "UpstreamRetryAfter", wantEvent: "upstream asked to retry after 2m0s", wantOpens: 1,
		check: func(g Gomega, st cbv1.CircuitBreakerStatus) {
			g.Expect(st.OpenUntil.Sub(st.LastTransitionTime.Time)).To(BeNumerically("~", 2*time.Minute, time.Second))
		},
	}, {
		name:       "consecutive failures",
		spec:       func(cb *cbv1.CircuitBreaker) { cb.Spec.FailureThreshold = 2 },
		calls:      []string{"fail", "fail"},
		wantReason: "ConsecutiveFailures", wantEvent: "2 consecutive failures, last: 500", wantOpens: 1,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			p := startPolicy(t, "rules", 5, time.Minute, tc.spec)
			ns, h, cb, route, mode := p.ns, p.h, p.cb, p.route, p.mode
			reset(g, ns, "rules", "fresh") // a clean window after the readiness call
			for _, m := range tc.calls {
				mode.Store(m)
				call(g, route)
			}
			g.Eventually(func(g Gomega) {
				st := getBreaker(g, ns, "rules").Status
				g.Expect(st.State).To(Equal(cbv1.StateOpen))
				g.Expect(st.LastOpenReason).To(Equal(tc.wantReason))
				g.Expect(st.ConsecutiveOpens).To(Equal(tc.wantOpens))
				g.Expect(st.History[len(st.History)-1].OpenReason).To(Equal(tc.wantReason))
				if tc.check != nil {
					tc.check(g, st)
				}
			}).Should(Succeed())
			g.Eventually(func() []string { return events(g, ns, "rules") }).Should(ContainElement(SatisfyAll(
				HavePrefix("Opened: "), ContainSubstring(tc.wantEvent))))
			if cb.Spec.FailureRate != nil {
				g.Eventually(func() []string { return seriesOf(g, h.metrics, "rules") }).Should(SatisfyAll(
					ContainElement(SatisfyAll(HavePrefix("circuitbreaker_failure_rate"), ContainSubstring("gauge:{value:"))),
					ContainElement(HavePrefix("circuitbreaker_slow_call_rate"))), "the rate gauges of a windowed breaker")
			} else {
				g.Expect(seriesOf(g, h.metrics, "rules")).NotTo(ContainElement(HavePrefix("circuitbreaker_failure_rate")), "none without a window")
			}
		})
	}
}

// A probe failing reopens with reason ProbeFailed, each opening longer. The
// breakers' time is a fake clock the test steps past the recovery timeout.
func TestProbeFailureOpensLonger(t *testing.T) {
	g := NewWithT(t)
	clk := testingclock.NewFakeClock(time.Now())
	p := startPolicy(t, "growing", 1, time.Second, func(cb *cbv1.CircuitBreaker) {
		cb.Spec.OpenDuration = &cbv1.OpenDuration{Multiplier: 3, Max: &metav1.Duration{Duration: time.Minute}}
	}, withClock(clk))
	ns, h, route, mode := p.ns, p.h, p.route, p.mode
	mode.Store("fail")
	g.Expect(call(g, route)).To(Equal(500))
	b := liveBreaker(g, h, ns, "growing")
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateOpen))
	clk.Step(time.Second)
	g.Eventually(func() breaker.State { return b.Snapshot().State }, 5*time.Second).Should(Equal(breaker.StateHalfOpen))
	g.Expect(call(g, route)).To(Equal(500), "the probe fails")
	g.Eventually(func(g Gomega) {
		st := getBreaker(g, ns, "growing").Status
		g.Expect(st.State).To(Equal(cbv1.StateOpen))
		g.Expect(st.LastOpenReason).To(Equal("ProbeFailed"))
		g.Expect(st.ConsecutiveOpens).To(Equal(int32(2)))
		g.Expect(st.OpenUntil.Sub(st.LastTransitionTime.Time)).To(BeNumerically("~", 3*time.Second, time.Second), "1s × 3")
	}).Should(Succeed())
}

// The modes through the proxy: what callers get, what the status says.
func TestModes(t *testing.T) {
	g := NewWithT(t)
	p := startPolicy(t, "modal", 2, time.Hour, func(cb *cbv1.CircuitBreaker) { cb.Spec.Mode = cbv1.ModeObserve })
	ns, route, mode, hits := p.ns, p.route, p.mode, p.hits

	// Observe: it opens, as a shadow; every call still reaches the upstream.
	mode.Store("fail")
	before := hits.Load()
	for range 5 {
		g.Expect(call(g, route)).To(Equal(500))
	}
	g.Expect(hits.Load()-before).To(Equal(int64(5)), "nothing is rejected")
	g.Eventually(func() string { return getBreaker(g, ns, "modal").Status.State }).Should(Equal(cbv1.StateOpen))
	g.Eventually(func() []string { return events(g, ns, "modal") }).Should(ContainElement(SatisfyAll(
		HavePrefix("Opened: "), HaveSuffix("(mode Observe: no call is rejected)"))))
	g.Expect(tableRow(g, ns, "modal", false)).To(HaveKeyWithValue("Mode", "Observe"))

	// ForcedOpen: every call is rejected without Retry-After, the upstream untouched.
	setMode(g, ns, "modal", cbv1.ModeForcedOpen)
	mode.Store("ok")
	g.Eventually(func() int { return call(g, route) }).Should(Equal(503))
	before = hits.Load()
	resp, err := http.Get(route)
	g.Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(503))
	g.Expect(resp.Header.Get("Retry-After")).To(BeEmpty())
	g.Expect(hits.Load()).To(Equal(before))
	g.Eventually(func(g Gomega) {
		st := getBreaker(g, ns, "modal").Status
		g.Expect(st.State).To(Equal(cbv1.StateOpen))
		g.Expect(st.LastOpenReason).To(Equal("Forced"))
		g.Expect(st.OpenUntil).To(BeNil())
	}).Should(Succeed())

	// Disabled: failing calls pass and count for nothing.
	setMode(g, ns, "modal", cbv1.ModeDisabled)
	mode.Store("fail")
	g.Eventually(func() int { return call(g, route) }).Should(Equal(500))
	for range 5 {
		g.Expect(call(g, route)).To(Equal(500))
	}
	bumpAndObserve(g, ns, "modal")
	st := getBreaker(g, ns, "modal").Status
	g.Expect(st.State).To(Equal(cbv1.StateClosed), "leaving ForcedOpen closed it; Disabled keeps it so")
	g.Expect(st.FailureCount).To(BeZero())

	// Back to Enforce: a fresh start that opens on its own failures.
	setMode(g, ns, "modal", cbv1.ModeEnforce)
	g.Eventually(func(g Gomega) {
		for range 2 {
			call(g, route)
		}
		g.Expect(getBreaker(g, ns, "modal").Status.State).To(Equal(cbv1.StateOpen))
	}).Should(Succeed())
}

func setMode(g Gomega, namespace, name, mode string) {
	patchSpec(g, namespace, name, func(cb *cbv1.CircuitBreaker) { cb.Spec.Mode = mode })
	g.Eventually(func(g Gomega) {
		cb := getBreaker(g, namespace, name)
		g.Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
	}).Should(Succeed())
}

// Invalid combinations are refused by the API server, naming the field.
func TestInvalidPolicyIsRefused(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	for _, tc := range []struct {
		spec  map[string]any
		field string
	}{
		{map[string]any{"failureThreshold": int64(0)}, "spec.failureThreshold"},
		{map[string]any{"failureRate": map[string]any{"threshold": int64(101)}}, "spec.failureRate.threshold"},
		{map[string]any{"failureRate": map[string]any{"threshold": int64(50), "window": "500ms"}}, "spec.failureRate.window"},
		{map[string]any{"failureRate": map[string]any{"threshold": int64(50), "window": "11m"}}, "spec.failureRate.window"},
		{map[string]any{"slowCall": map[string]any{"durationThreshold": "10s", "rateThreshold": int64(50)}}, "spec.slowCall.durationThreshold"},
		{map[string]any{"requestTimeout": "1s", "slowCall": map[string]any{"durationThreshold": "2s", "rateThreshold": int64(50)}},
			"spec.slowCall.durationThreshold"},
		{map[string]any{"slowCall": map[string]any{"durationThreshold": "1s", "rateThreshold": int64(0)}}, "spec.slowCall.rateThreshold"},
		{map[string]any{"openDuration": map[string]any{"max": "10s"}}, "spec.openDuration.max"},
		{map[string]any{"openDuration": map[string]any{"multiplier": int64(11)}}, "spec.openDuration.multiplier"},
		{map[string]any{"openDuration": map[string]any{"jitter": int64(101)}}, "spec.openDuration.jitter"},
		{map[string]any{"mode": "Sometimes"}, "spec.mode"},
	} {
		t.Run(tc.field, func(t *testing.T) {
			g := NewWithT(t)
			spec := map[string]any{"upstream": map[string]any{"service": map[string]any{"name": "order-api", "port": int64(8080)}}}
			for k, v := range tc.spec {
				spec[k] = v
			}
			u := rawWithSpec(g, newCircuitBreaker(ns, "bad"), spec)
			err := k8sClient.Create(context.Background(), u)
			g.Expect(err).To(HaveOccurred())
			g.Expect(err.Error()).To(ContainSubstring(tc.field))
		})
	}
	// failureThreshold: 0 with failureRate is allowed: the rate rule alone.
	spec := map[string]any{"upstream": map[string]any{"service": map[string]any{"name": "order-api", "port": int64(8080)}},
		"failureThreshold": int64(0), "failureRate": map[string]any{"threshold": int64(50)}}
	u := rawWithSpec(g, newCircuitBreaker(ns, "rate-only"), spec)
	g.Expect(k8sClient.Create(context.Background(), u)).To(Succeed())
	var stored unstructured.Unstructured
	stored.SetGroupVersionKind(u.GroupVersionKind())
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "rate-only"}, &stored)).To(Succeed())
	g.Expect(stored.Object["spec"].(map[string]any)["failureRate"]).To(
		Equal(map[string]any{"threshold": int64(50), "minimumRequests": int64(20), "window": "30s"}),
		"defaults filled in")
}
