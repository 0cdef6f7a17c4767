package restapi

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

var epoch = time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)

type fixture struct {
	srv      *httptest.Server
	registry *breaker.Registry
	clock    *clocktesting.FakeClock
}

// newFixture serves the API over a registry and, for the status it shows,
// an in-memory client holding one resource; routes that write through the
// API server (reset) are tested with envtest in internal/controller.
func newFixture(t *testing.T) *fixture {
	clk := clocktesting.NewFakeClock(epoch)
	f := &fixture{registry: breaker.NewRegistry(clk), clock: clk}
	scheme := runtime.NewScheme()
	NewWithT(t).Expect(cbv1.AddToScheme(scheme)).To(Succeed())
	withReplicas := &cbv1.CircuitBreaker{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "order-api"},
		Status: cbv1.CircuitBreakerStatus{OpenReplicas: "1/2", ExposedAs: "order-api-breaker.shop.svc.cluster.local",
			Endpoints: &cbv1.EndpointsStatus{Ready: 3, Ejected: 1, Summary: "2/3", EjectedEndpoints: []cbv1.EjectedEndpoint{
				{Address: "10.1.2.3", Pod: "order-api-x2x", Until: metav1.NewTime(epoch.Add(30 * time.Second))}}},
			Replicas: []cbv1.ReplicaStatus{
				{Name: "pod-a", State: cbv1.StateOpen, FailureCount: 2, LastUpdate: metav1.NewMicroTime(epoch)},
				{Name: "pod-b", State: cbv1.StateHalfOpen, LastUpdate: metav1.NewMicroTime(epoch)},
			}},
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(withReplicas).Build()
	f.srv = httptest.NewServer(New(f.registry, c, clk, Options{ResetTimeout: time.Second, BindAddress: "127.0.0.1:8082", Log: logr.Discard()}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) do(t *testing.T, method, path string) (*http.Response, map[string]any) {
	req, _ := http.NewRequest(method, f.srv.URL+path, nil)
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && method != http.MethodHead {
		NewWithT(t).Expect(json.Unmarshal(raw, &body)).To(Succeed(), string(raw))
	}
	return resp, body
}

func TestListAndGet(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	b, _ := f.registry.Upsert(breaker.NewKey("shop", "order-api"), "uid", breaker.Settings{FailureThreshold: 2, RecoveryTimeout: 30 * time.Second}, nil)
	f.registry.Upsert(breaker.NewKey("shop", "catalog"), "uid", breaker.Settings{}, nil)
	tk, _ := b.Allow()
	tk.Success()
	f.clock.Step(time.Second)
	for range 2 {
		tk, _ := b.Allow()
		tk.Failure(breaker.Failure{StatusCode: 503})
	}
	_, _ = b.Allow() // rejected
	f.clock.Step(10*time.Second + 200*time.Millisecond)

	resp, body := f.do(t, http.MethodGet, "/api/circuit-breakers/shop/order-api")
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(body).To(Equal(map[string]any{
		"success": true,
		"circuit_breaker": map[string]any{
			"name": "order-api", "namespace": "shop", "state": "open",
			"failure_count": 2.0, "failure_threshold": 2.0, "recovery_timeout": 30.0,
			"last_failure_time": float64(epoch.Add(time.Second).Unix()),
			"time_remaining":    20.0, // 19.8s left, in whole seconds rounded up
			"requests_total":    3.0, "rejections_total": 1.0,
			"history": []any{map[string]any{
				"time": float64(epoch.Add(time.Second).Unix()), "from": "closed", "to": "open",
				"reason": "2 consecutive failures, last: 503",
			}},
			"open_replicas": "1/2",
			"mode":          "Enforce", "last_open_reason": "ConsecutiveFailures", "consecutive_opens": 1.0,
			"failure_rate": 0.0, "slow_call_rate": 0.0,
			"exposed_as": "order-api-breaker.shop.svc.cluster.local",
			"endpoints": map[string]any{"summary": "2/3", "ejected": []any{
				map[string]any{"address": "10.1.2.3", "pod": "order-api-x2x", "until": float64(epoch.Add(30 * time.Second).Unix())}}},
			"replicas": []any{
				map[string]any{"name": "pod-a", "state": "open", "failure_count": 2.0, "last_update": float64(epoch.Unix())},
				map[string]any{"name": "pod-b", "state": "half-open", "failure_count": 0.0, "last_update": float64(epoch.Unix())},
			},
		},
	}))

	resp, body = f.do(t, http.MethodGet, "/api/circuit-breakers")
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(body["success"]).To(BeTrue())
	all := body["circuit_breakers"].(map[string]any)
	g.Expect(all).To(HaveKey("shop/order-api"))
	g.Expect(all["shop/catalog"]).To(Equal(map[string]any{
		"name": "catalog", "namespace": "shop", "state": "closed",
		"failure_count": 0.0, "failure_threshold": 5.0, "recovery_timeout": 30.0,
		"last_failure_time": 0.0, "time_remaining": 0.0,
		"requests_total": 0.0, "rejections_total": 0.0, "history": []any{},
		"replicas": []any{}, "open_replicas": "",
		"mode": "Enforce", "last_open_reason": "", "consecutive_opens": 0.0, "failure_rate": 0.0, "slow_call_rate": 0.0,
	}))

	f.clock.Step(20 * time.Second)
	_, body = f.do(t, http.MethodGet, "/api/circuit-breakers/shop/order-api")
	entry := body["circuit_breaker"].(map[string]any)
	g.Expect(entry["state"]).To(Equal("half-open"), "computed live")
	g.Expect(entry["time_remaining"]).To(Equal(0.0))
}

func TestTimeline(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	b, _ := f.registry.Upsert(breaker.NewKey("shop", "order-api"), "uid",
		breaker.Settings{FailureThreshold: 2, RecoveryTimeout: time.Hour, SlowCallDuration: time.Second}, nil)
	f.registry.Upsert(breaker.NewKey("shop", "catalog"), "uid", breaker.Settings{}, nil)
	// What the proxy does per call: the verdict, then the call on the timeline.
	call := func(latency time.Duration, failed bool) {
		tk, err := b.Allow()
		if err != nil {
			return // a rejection is on the timeline already
		}
		if failed {
			tk.Failure(breaker.Failure{StatusCode: 503})
		} else {
			tk.Success()
		}
		b.RecordCall(latency, failed)
	}
	f.clock.Step(20 * time.Second) // 17:00:20
	for range 3 {
		call(10*time.Millisecond, false)
	}
	call(2*time.Second, false) // slow
	f.clock.Step(time.Minute)  // 17:01:20
	call(time.Millisecond, true)
	call(time.Millisecond, true) // opens
	call(0, false)               // rejected
	f.clock.Step(2 * time.Minute)

	resp, body := f.do(t, http.MethodGet, "/api/circuit-breakers/shop/order-api/timeline")
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	minute := func(n int) float64 { return float64(epoch.Add(time.Duration(n) * time.Minute).Unix()) }
	point := func(n int, calls, failures, rejections, slow, p99 float64, state string) map[string]any {
		return map[string]any{"time": minute(n), "calls": calls, "failures": failures, "rejections": rejections,
			"slow": slow, "p99_ms": p99, "state": state}
	}
	g.Expect(body).To(Equal(map[string]any{
		"success": true,
		"timeline": map[string]any{"step_seconds": 60.0, "points": []any{
			// p99 is the midpoint of its histogram bucket: 2 s is in
			// [1572.864, 2097.152) ms, 1 ms in [0.768, 1.024) ms.
			point(0, 4, 0, 0, 1, 1835.008, "closed"),
			point(1, 2, 2, 1, 0, 0.896, "open"),
			point(2, 0, 0, 0, 0, 0, "open"), // no traffic, still open
			point(3, 0, 0, 0, 0, 0, "open"),
		}},
	}))

	_, body = f.do(t, http.MethodGet, "/api/circuit-breakers/shop/catalog/timeline")
	g.Expect(body).To(Equal(map[string]any{"success": true, "timeline": map[string]any{"step_seconds": 60.0, "points": []any{}}}),
		"a breaker without traffic has no timeline")
}

func TestErrors(t *testing.T) {
	f := newFixture(t)
	f.registry.Upsert(breaker.NewKey("shop", "order-api"), "uid", breaker.Settings{}, nil)
	tests := []struct {
		method, path string
		status       int
		allow        string
		err          string
	}{
		{"GET", "/api/circuit-breakers/shop/missing", 404, "", "Circuit breaker 'shop/missing' not found"},
		{"POST", "/api/circuit-breakers/shop/missing/reset", 404, "", "Circuit breaker 'shop/missing' not found"},
		{"GET", "/api/circuit-breakers/Shop_1/order-api", 400, "", `invalid namespace "Shop_1"`},
		{"GET", "/api/circuit-breakers/shop/Order_API", 400, "", `invalid name "Order_API"`},
		{"POST", "/api/circuit-breakers/shop/Bad_Name/reset", 400, "", `invalid name "Bad_Name"`},
		{"POST", "/api/circuit-breakers", 405, "GET", "method POST not allowed: use GET"},
		{"DELETE", "/api/circuit-breakers/shop/order-api", 405, "GET", "method DELETE not allowed: use GET"},
		{"GET", "/api/circuit-breakers/shop/order-api/reset", 405, "POST", "method GET not allowed: use POST"},
		{"POST", "/", 405, "GET", "method POST not allowed: use GET"},
		{"GET", "/api/unknown", 404, "", "no such route: /api/unknown"},
		{"GET", "/api/circuit-breakers/shop/order-api/reset/more", 404, "", "no such route"},
		{"GET", "/api/circuit-breakers/shop/missing/timeline", 404, "", "Circuit breaker 'shop/missing' not found"},
		{"GET", "/api/circuit-breakers/shop/Bad_Name/timeline", 400, "", `invalid name "Bad_Name"`},
		{"POST", "/api/circuit-breakers/shop/order-api/timeline", 405, "GET", "method POST not allowed: use GET"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			g := NewWithT(t)
			resp, body := f.do(t, tt.method, tt.path)
			g.Expect(resp.StatusCode).To(Equal(tt.status))
			g.Expect(resp.Header.Get("Allow")).To(Equal(tt.allow))
			g.Expect(body["success"]).To(BeFalse())
			g.Expect(body["error"]).To(ContainSubstring(tt.err))
		})
	}
}

func TestDashboardIsSelfContained(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	resp, err := http.Get(f.srv.URL + "/")
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(resp.Header.Get("Content-Type")).To(Equal("text/html; charset=utf-8"))
	g.Expect(string(page)).To(ContainSubstring("/api/circuit-breakers"))
	for _, external := range []string{"<script src", "<link", "@import", "http://", "https://", "url("} {
		g.Expect(string(page)).NotTo(ContainSubstring(external), "no external scripts, styles or fonts")
	}
}

// The API serves only its user: pages of other sites can neither read it
// (DNS rebinding: a foreign Host) nor reset through it (CSRF).
func TestOnlyItsUserIsServed(t *testing.T) {
	f := newFixture(t)
	f.registry.Upsert(breaker.NewKey("shop", "order-api"), "uid", breaker.Settings{}, nil)
	tests := []struct {
		name    string
		method  string
		path    string
		headers map[string]string
		status  int
		err     string
	}{
		{name: "a rebound name is refused", method: "GET", path: "/api/circuit-breakers",
			headers: map[string]string{"Host": "attacker.example.com"}, status: 403, err: "only requests for its own address"},
		{name: "localhost through a port-forward", method: "GET", path: "/api/circuit-breakers",
			headers: map[string]string{"Host": "localhost:18082"}, status: 200},
		{name: "the bind address", method: "GET", path: "/api/circuit-breakers",
			headers: map[string]string{"Host": "127.0.0.1:8082"}, status: 200},
		{name: "IPv6 loopback", method: "GET", path: "/", headers: map[string]string{"Host": "[::1]:8082"}, status: 200},
		{name: "a plain reset, as curl -X POST sends it", method: "POST", path: "/api/circuit-breakers/shop/missing/reset",
			status: 404, err: "not found"},
		{name: "a form post from a page of another site", method: "POST", path: "/api/circuit-breakers/shop/missing/reset",
			headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"}, status: 403, err: "cross-site"},
		{name: "a form post from an old browser on another origin", method: "POST", path: "/api/circuit-breakers/shop/missing/reset",
			headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://attacker.example.com"}, status: 403, err: "cross-origin"},
		{name: "a page of the same origin by Origin alone", method: "POST", path: "/api/circuit-breakers/shop/missing/reset",
			headers: map[string]string{"Host": "127.0.0.1:8082", "Origin": "http://127.0.0.1:8082"}, status: 404, err: "not found"},
		{name: "a same-site page of another origin", method: "POST", path: "/api/circuit-breakers/shop/missing/reset",
			headers: map[string]string{"Sec-Fetch-Site": "same-site"}, status: 403, err: "cross-origin"},
		{name: "a reset from another origin", method: "POST", path: "/api/circuit-breakers/shop/missing/reset",
			headers: map[string]string{"Content-Type": "application/json", "Origin": "https://attacker.example.com"}, status: 403, err: "cross-origin"},
		{name: "a reset a browser calls cross-site", method: "POST", path: "/api/circuit-breakers/shop/missing/reset",
			headers: map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, status: 403, err: "cross-site"},
		{name: "the dashboard, same origin", method: "POST", path: "/api/circuit-breakers/shop/missing/reset",
			headers: map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin"}, status: 404, err: "not found"},
		{name: "a GET from another site reads (the browser keeps the answer from the page)", method: "GET", path: "/api/circuit-breakers",
			headers: map[string]string{"Sec-Fetch-Site": "cross-site"}, status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			req, _ := http.NewRequest(tt.method, f.srv.URL+tt.path, nil)
			for k, v := range tt.headers {
				if k == "Host" {
					req.Host = v
					continue
				}
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			g.Expect(err).NotTo(HaveOccurred())
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			g.Expect(resp.StatusCode).To(Equal(tt.status), string(raw))
			g.Expect(string(raw)).To(ContainSubstring(tt.err))
			g.Expect(resp.Header.Get("X-Content-Type-Options")).To(Equal("nosniff"))
			g.Expect(resp.Header.Get("Content-Security-Policy")).To(ContainSubstring("frame-ancestors 'none'"))
		})
	}
}
