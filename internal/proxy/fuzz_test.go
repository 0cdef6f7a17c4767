package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
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

// FuzzUpstreamAnswer sends a call through the proxy, served as the data
// plane serves it, to a raw upstream that answers with the fuzzed bytes
// (then hangs up, or keeps the connection open), from a caller on a raw
// connection; head makes it a HEAD. The seeds are the framing corpus's
// answers. Whatever the answer: no panic; no hang past the route's
// timeouts; the caller gets a well-formed answer, or a connection that
// closes (before an answer, or cutting one short); at most one verdict,
// and no probe slot leaked; and a second call, on a fresh connection,
// gets a fresh answer: the proxy is not stuck, and serves nothing the
// fuzzed answer left behind as another answer.
func FuzzUpstreamAnswer(f *testing.F) {
	for _, c := range upstreamFraming {
		if raw := c.answer.raw + c.answer.later; len(raw) <= 1<<10 {
			// Not the 64 KiB headers: minimizing what grows from them
			// takes longer than a run.
			f.Add([]byte(raw), c.method == http.MethodHead, !c.answer.close)
		}
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"), false, true)
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"), false, true)
	f.Add([]byte("HTTP/1.1 103 Early Hints\r\n\r\n"), false, true)
	f.Add([]byte(strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", 9)+freshAnswer), false, false)

	// The fuzzed answer, for calls to /fuzz; every other call is answered fresh.
	var fuzzed atomic.Pointer[rawAnswer]
	up := newRawUpstream(f, func(_ int, uri string) rawAnswer {
		if a := fuzzed.Load(); a != nil && uri == "/fuzz" {
			return *a
		}
		return rawAnswer{raw: freshAnswer}
	})
	clk := clocktesting.NewFakeClock(time.Now())
	table := NewTable(metrics.NewBreakers(prometheus.NewRegistry()))
	px := New(table, clk, Options{LoopToken: "fuzz"})
	var panicked atomic.Pointer[string]
	// ended is closed once the iteration's fuzzed call has ended, any
	// panic recorded.
	var ended atomic.Pointer[chan struct{}]
	addr := serveWith(f, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if done := ended.Load(); done != nil && strings.HasPrefix(r.URL.Path, "/shop/a/") {
			defer close(*done)
		}
		defer func() {
			if p := recover(); p != nil {
				if p != http.ErrAbortHandler {
					msg := fmt.Sprintf("%v\n%s", p, debug.Stack())
					panicked.Store(&msg)
				}
				panic(p)
			}
		}()
		px.ServeHTTP(w, r)
	}))
	target, _ := url.Parse(up.url())
	codes, _ := ParseStatusCodes([]string{"5xx"})
	// The fuzzed calls' request and stream idle timeouts: short, for an
	// answer that never ends costs an iteration that long.
	const timeout = 10 * time.Millisecond
	route := RouteConfig{Target: target, Timeout: timeout, StreamIdleTimeout: timeout, MaxConcurrent: 8, FailureCodes: codes}
	fresh := route
	fresh.Timeout, fresh.StreamIdleTimeout = 5*time.Second, 5*time.Second
	bound := 2*timeout + 2*time.Second

	f.Fuzz(func(t *testing.T, answer []byte, head, keepOpen bool) {
		g := NewWithT(t)
		up.forget()
		panicked.Store(nil) // the last iteration's calls have all ended
		done := make(chan struct{})
		ended.Store(&done)
		fuzzed.Store(&rawAnswer{raw: string(answer), close: !keepOpen})
		// A half-open breaker that admits one probe and needs two
		// successes to close: two verdicts from one call would close it.
		b := breaker.New(breaker.Settings{FailureThreshold: 1, RecoveryTimeout: time.Second, HalfOpenMaxRequests: 1, SuccessThreshold: 2}, clk, breaker.Options{})
		opening, _ := b.Allow()
		opening.Failure(breaker.Failure{StatusCode: 500})
		clk.Step(time.Second)
		table.Set("shop/a", b, route)
		table.Set("shop/fresh", breaker.New(breaker.Settings{}, clk, breaker.Options{}), fresh)

		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		c := dialCaller(g, addr)
		c.wait = bound
		c.send(g, method+" /shop/a/fuzz HTTP/1.1\r\nHost: p\r\n\r\n")
		for {
			a, err := c.read(method)
			if err != nil {
				if !closedConn(err) {
					t.Fatalf("the caller got no well-formed answer: %v", err)
				}
				break
			}
			if a.bodyErr != nil && !closedConn(a.bodyErr) {
				t.Fatalf("the caller got a %d whose body is not well-formed: %v", a.status, a.bodyErr)
			}
			if a.status == http.StatusSwitchingProtocols {
				t.Fatalf("the caller got a 101 it never asked for")
			}
			if a.status >= 200 || a.bodyErr != nil {
				break
			}
		}
		c.close()
		select {
		case <-done:
		case <-time.After(bound):
			t.Fatalf("the call did not end within %v", bound)
		}
		if p := panicked.Load(); p != nil {
			t.Fatalf("panic: %s", *p)
		}
		switch s := b.Snapshot(); s.State {
		case breaker.StateClosed:
			t.Fatalf("one call closed a breaker that needs two successful probes: two verdicts")
		case breaker.StateHalfOpen:
			probe, err := b.Allow()
			if err != nil {
				t.Fatalf("the probe slot leaked: %v", err)
			}
			probe.Cancel()
		}

		// net/http's Transport drops a connection with bytes left over
		// once its read loop gets to them, which a call that comes at once
		// may beat, and read them as its answer (reported: the corpus's
		// leftover cases hit it 1 in 300 runs, these seeds under -race 1
		// in 15). Wait for that drop; a connection still open after 20 ms
		// is one the proxy kept, and the second call may get it.
		up.awaitHangUp("/fuzz", 20*time.Millisecond)
		second := dialCaller(g, addr)
		defer second.close()
		second.wait = bound
		second.send(g, "GET /shop/fresh/x HTTP/1.1\r\nHost: p\r\n\r\n")
		a, err := second.read(http.MethodGet)
		if err != nil || a.status != http.StatusOK || string(a.body) != "fresh" {
			t.Fatalf("a second call got %q (%v), not the upstream's fresh answer", a.raw, err)
		}
	})
}

// closedConn reports whether err is a connection's end: closed before an
// answer or in one, or reset.
func closedConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
