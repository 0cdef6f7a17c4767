package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
)

// FuzzSplitPath: any path either names a breaker as <namespace>/<name>
// taken from its first two segments, or is refused; it never panics.
func FuzzSplitPath(f *testing.F) {
	for _, seed := range []string{"/shop/order-api/a/b", "/shop/order-api", "/", "//", "/a//b", "/a/b/", "", "/%2F/x"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, path string) {
		key, rest, ok := splitPath(path)
		if !ok {
			return
		}
		namespace, name, found := strings.Cut(string(key), "/")
		if !found || namespace == "" || name == "" || strings.Contains(name, "/") {
			t.Fatalf("splitPath(%q) = key %q: want <namespace>/<name>", path, key)
		}
		if "/"+string(key)+rest != path {
			t.Fatalf("splitPath(%q) = %q + %q: does not rebuild the path", path, key, rest)
		}
		if rest != "" && rest[0] != '/' {
			t.Fatalf("splitPath(%q): rest %q does not start with /", path, rest)
		}
	})
}

// FuzzParseStatusCodes: a pattern is refused or yields codes 100..599 only.
func FuzzParseStatusCodes(f *testing.F) {
	for _, seed := range []string{"5xx", "429", "500-504", "504-500", "abc", "6xx", "", "1xx", "599-600"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, pattern string) {
		set, err := ParseStatusCodes([]string{pattern})
		if err != nil {
			return
		}
		for code := 0; code < 640; code++ {
			if set.Contains(code) && (code < 100 || code > 599) {
				t.Fatalf("%q contains %d", pattern, code)
			}
		}
	})
}

// FuzzProxyHandler sends arbitrary requests (method, path, headers, body)
// through the proxy to a half-open breaker that admits one probe and needs
// two successes to close. Whatever the request: no panic, at most one
// verdict (two successes from one call would close the breaker), and the
// probe slot is never leaked (the next call is admitted again).
func FuzzProxyHandler(f *testing.F) {
	f.Add("GET", "/shop/a/x", "Accept: */*", []byte(nil))
	f.Add("POST", "/shop/a/orders?id=1", "Content-Type: application/json", []byte(`{"id":1}`))
	f.Add("GET", "/shop/a/ws", "Connection: Upgrade\nUpgrade: \x01evil", []byte(nil))
	f.Add("GET", "/shop/a/ws", "Connection: Upgrade\nUpgrade: websocket", []byte(nil))
	f.Add("PUT", "/shop/a/%zz", "Transfer-Encoding: chunked", []byte("zz\r\n"))
	f.Add("GET", "/shop/a/x", "Via: 1.1 circuit-breaker-fuzz", []byte(nil))
	f.Add("DELETE", "/shop/a/../../etc", "Expect: 100-continue\nContent-Length: 5", []byte("hello"))
	f.Add("GET", "/shop/a/x", "Connection: close, X-Forwarded-For\nX-Forwarded-For: 1.2.3.4", []byte(nil))
	f.Add("OPTIONS", "*", "", []byte(nil))
	f.Add("GET", "/shop/a/ws", "Connection: Upgrade\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA", []byte(nil))
	f.Add("GET", "/shop/a/%2e%2e/x", "Via: 1.1 circuit-breaker-fuzz\nX-Circuit-Breaker-Hop: AAAAAAAAAAAAAAAAAAAAAA", []byte(nil))

	var mode atomic.Int32 // 0 ok, 1 fail, 2 upgrade, 3 slow
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch mode.Add(1) % 4 {
		case 1:
			w.WriteHeader(http.StatusInternalServerError)
		case 2:
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "websocket")
			w.WriteHeader(http.StatusSwitchingProtocols)
		default:
			_, _ = io.WriteString(w, "ok")
		}
	}))
	defer upstream.Close()
	clk := clocktesting.NewFakeClock(time.Now())
	table := NewTable(metrics.NewBreakers(prometheus.NewRegistry()))
	px := New(table, clk, Options{LoopToken: "fuzz"})
	target, _ := url.Parse(upstream.URL)
	codes, _ := ParseStatusCodes([]string{"5xx"})
	route := RouteConfig{Target: target, Timeout: 2 * time.Second, StreamIdleTimeout: time.Second, MaxConcurrent: 8, FailureCodes: codes}

	f.Fuzz(func(t *testing.T, method, path, headers string, body []byte) {
		b := breaker.New(breaker.Settings{FailureThreshold: 1, RecoveryTimeout: time.Second, HalfOpenMaxRequests: 1, SuccessThreshold: 2}, clk, breaker.Options{})
		opening, _ := b.Allow()
		opening.Failure(breaker.Failure{StatusCode: 500})
		clk.Step(time.Second) // due for probing: the fuzzed call is the probe
		table.Set("shop/a", b, route)

		req := &http.Request{Method: method, URL: &url.URL{Path: path, RawQuery: ""}, Header: http.Header{},
			Host: "proxy", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, RemoteAddr: "192.0.2.1:1234",
			Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
		if u, err := url.ParseRequestURI(path); err == nil {
			req.URL = u
		}
		for _, line := range strings.Split(headers, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
		}
		func() {
			defer func() {
				// ReverseProxy aborts a broken stream with http.ErrAbortHandler,
				// which the server recovers from; anything else is a bug.
				if p := recover(); p != nil && p != http.ErrAbortHandler {
					t.Fatalf("panic: %v", p)
				}
			}()
			px.ServeHTTP(httptest.NewRecorder(), req.WithContext(context.Background()))
		}()

		s := b.Snapshot()
		if s.State == breaker.StateClosed {
			t.Fatalf("one call closed a breaker that needs two successful probes: two verdicts")
		}
		if s.State == breaker.StateHalfOpen {
			probe, err := b.Allow()
			if err != nil {
				t.Fatalf("the probe slot leaked: %v", err)
			}
			probe.Cancel()
		}
	})
}
