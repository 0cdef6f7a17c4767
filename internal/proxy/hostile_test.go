package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
)

// realServer serves f's proxy on a loopback TCP port with the data plane's
// real limits (NewServer), for clients that write raw bytes.
func realServer(t *testing.T, f *fixture) string {
	srv := httptest.NewUnstartedServer(f.proxy.Config.Handler)
	srv.Config = NewServer("", f.proxy.Config.Handler)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// rawExchange writes raw to addr, then, unless hangUp, reads the status
// code of the answer (0 when the connection closed without one).
func rawExchange(g Gomega, addr, raw string, hangUp bool) int {
	conn, err := net.Dial("tcp", addr)
	g.Expect(err).NotTo(HaveOccurred())
	defer conn.Close()
	_, err = io.WriteString(conn, raw)
	g.Expect(err).NotTo(HaveOccurred())
	if hangUp {
		return 0
	}
	g.Expect(conn.SetReadDeadline(time.Now().Add(30 * time.Second))).To(Succeed())
	br := bufio.NewReader(conn)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		if resp.StatusCode >= 200 { // past interim answers such as 100 Continue
			return resp.StatusCode
		}
	}
}

// Requests a caller can craft to make the proxy fail: none of them may
// count against the upstream, however often they are sent.
func TestHostileRequestsTripNothing(t *testing.T) {
	const threshold = 3
	tests := []struct {
		name   string
		raw    string
		hangUp bool // the caller leaves after writing raw
		status int  // 0: the caller left, or the server closed the connection
		// reachesUpstream: the upstream may see the request start (its
		// headers), but never a complete one.
		reachesUpstream bool
	}{
		{name: "a non-printable Upgrade", status: 400,
			raw: "GET /shop/a/x HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: \x01evil\r\n\r\n"},
		{name: "a body promised and never sent", status: 400, reachesUpstream: true,
			raw: "POST /shop/a/x HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n"},
		{name: "Expect: 100-continue and no body", status: 400, reachesUpstream: true,
			raw: "POST /shop/a/x HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n"},
		{name: "bad chunked encoding", status: 400, reachesUpstream: true,
			raw: "POST /shop/a/x HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n"},
		{name: "a caller leaving mid-upload", hangUp: true, reachesUpstream: true,
			raw: "POST /shop/a/x HTTP/1.1\r\nHost: p\r\nContent-Length: 1000\r\n\r\nonly a little"},
		{name: "oversized headers", status: 431,
			raw: "GET /shop/a/x HTTP/1.1\r\nHost: p\r\nX-Big: " + strings.Repeat("a", 2*MaxHeaderBytes) + "\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			var started, completed atomic.Int32
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				started.Add(1)
				if _, err := io.Copy(io.Discard, r.Body); err == nil {
					completed.Add(1)
				}
			}))
			defer up.Close()
			f := newFixture(t)
			// A real clock, and a slow-call rule every one of these calls
			// would trip if the time the caller holds it counted.
			b := f.addOn(t, clock.RealClock{}, "a", up.URL, breaker.Settings{
				FailureThreshold: threshold, HalfOpenMaxRequests: 1,
				Window: time.Minute, MinimumRequests: threshold, SlowCallDuration: time.Millisecond, SlowCallRateThreshold: 50,
			}, withTimeout(300*time.Millisecond))
			addr := realServer(t, f)
			for range threshold + 2 {
				g.Expect(rawExchange(g, addr, tt.raw, tt.hangUp)).To(Equal(tt.status))
			}
			// The last call has ended on the proxy's side once its slot is back.
			g.Eventually(func() int64 { rt, _ := f.table.get("shop/a"); return rt.inFlight.Load() }).Should(BeZero())
			s := b.Snapshot()
			g.Expect(s.State).To(Equal(breaker.StateClosed), "the caller's doing is no verdict: %s", s.LastOpenReason)
			g.Expect(s.Failures).To(BeZero())
			g.Expect(completed.Load()).To(BeZero(), "the upstream never got a complete request")
			if !tt.reachesUpstream {
				g.Expect(started.Load()).To(BeZero(), "the upstream was not contacted")
			}
		})
	}
}

// A caller's malformed requests must not hold a half-open breaker's probe
// slot either: the next call still probes.
func TestHostileRequestGivesItsProbeSlotBack(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	f := newFixture(t)
	b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1, RecoveryTimeout: time.Second, HalfOpenMaxRequests: 1},
		withTimeout(300*time.Millisecond))
	addr := realServer(t, f)
	up.mode.Store("500")
	f.get(t, "/shop/a/x")
	up.mode.Store("ok")
	f.clock.Step(time.Second)
	g.Expect(rawExchange(g, addr, "GET /shop/a/x HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: \x01evil\r\n\r\n", false)).To(Equal(400))
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateHalfOpen))
	resp, _ := f.get(t, "/shop/a/x")
	g.Expect(resp.StatusCode).To(Equal(200), "the probe slot was given back")
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed))
}

// A breaker whose upstream leads back to the proxy is cut at the first
// hop: 508, and no verdict on either hop.
func TestLoopIsCutAtTheFirstHop(t *testing.T) {
	g := NewWithT(t)
	table := NewTable(metrics.NewBreakers(prometheus.NewRegistry()))
	clk := clocktesting.NewFakeClock(time.Now())
	px := httptest.NewServer(New(table, clk, Options{LoopToken: "test"}))
	defer px.Close()
	b := breaker.New(breaker.Settings{FailureThreshold: 1}, clk, breaker.Options{})
	var hops atomic.Int32
	counting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hops.Add(1)
		px.Config.Handler.ServeHTTP(w, r)
	}))
	defer counting.Close()
	table.Set("shop/loop", b, testRoute(t, counting.URL+"/shop/loop"))

	resp, err := http.Get(px.URL + "/shop/loop/x")
	g.Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusLoopDetected))
	g.Expect(hops.Load()).To(Equal(int32(1)), "one hop back into the proxy, and no further")
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed), "a loop is no verdict on the upstream")
	g.Expect(b.Snapshot().Failures).To(BeZero())
}

// requestTimeout bounds the wait for the response headers; a stream then
// lives while bytes move, under streamIdleTimeout.
func TestStreamsOutliveTheRequestTimeout(t *testing.T) {
	const events = 8
	const every = 100 * time.Millisecond // 800ms of stream against a 200ms requestTimeout
	sse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for i := range events {
			_, _ = io.WriteString(w, "data: "+string(rune('a'+i))+"\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-time.After(every):
			case <-r.Context().Done():
				return
			}
		}
	}))
	defer sse.Close()
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			w.WriteHeader(400)
			return
		}
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(rw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		_ = rw.Flush()
		_, _ = io.Copy(conn, rw)
	}))
	defer echo.Close()

	t.Run("server-sent events", func(t *testing.T) {
		g := NewWithT(t)
		f := newFixture(t)
		b := f.add(t, "sse", sse.URL, breaker.Settings{}, withTimeout(200*time.Millisecond), withStreamIdle(time.Second))
		resp, body := f.get(t, "/shop/sse/")
		g.Expect(resp.StatusCode).To(Equal(200))
		g.Expect(strings.Count(body, "data: ")).To(Equal(events), "every event arrived, well past requestTimeout")
		g.Expect(b.Snapshot().Failures).To(BeZero())
	})
	t.Run("an upgraded connection", func(t *testing.T) {
		g := NewWithT(t)
		f := newFixture(t)
		f.add(t, "ws", echo.URL, breaker.Settings{}, withTimeout(200*time.Millisecond), withStreamIdle(time.Second))
		conn, br := upgrade(g, f, "/shop/ws/")
		defer conn.Close()
		for i := range events {
			msg := "ping " + string(rune('a'+i)) + "\n"
			_, err := io.WriteString(conn, msg)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(conn.SetReadDeadline(time.Now().Add(5 * time.Second))).To(Succeed())
			line, err := br.ReadString('\n')
			g.Expect(err).NotTo(HaveOccurred(), "message %d, past requestTimeout", i)
			g.Expect(line).To(Equal(msg))
			<-time.After(every)
		}
	})
	t.Run("an idle upgraded connection ends", func(t *testing.T) {
		g := NewWithT(t)
		f := newFixture(t)
		f.add(t, "ws", echo.URL, breaker.Settings{}, withTimeout(200*time.Millisecond), withStreamIdle(300*time.Millisecond))
		conn, br := upgrade(g, f, "/shop/ws/")
		defer conn.Close()
		g.Expect(conn.SetReadDeadline(time.Now().Add(10 * time.Second))).To(Succeed())
		_, err := br.ReadByte()
		g.Expect(err).To(MatchError(io.EOF), "the proxy closed it once idle, long before the read deadline")
	})
}

// Beyond maxConcurrentRequests callers get 503 saturated and no verdict.
func TestConcurrencyCap(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	up.mode.Store("block")
	f := newFixture(t)
	b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1}, withMaxConcurrent(2))
	done := holdCalls(g, f, up, "/shop/a/x", 2)
	resp, body := f.get(t, "/shop/a/x")
	g.Expect(resp.StatusCode).To(Equal(503))
	g.Expect(resp.Header.Get(StateHeader)).To(Equal("saturated"))
	g.Expect(jsonError(g, body)).To(ContainSubstring("2 calls in flight"))
	g.Expect(up.hits.Load()).To(Equal(int32(2)), "the upstream was not asked")
	close(up.release)
	g.Expect([]int{<-done, <-done}).To(Equal([]int{200, 200}))
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed))
	resp, _ = f.get(t, "/shop/a/x")
	g.Expect(resp.StatusCode).To(Equal(200), "slots are given back")
}

// A Service upstream never reaches loopback, link-local or the manager's
// own addresses, whatever its name resolves to.
func TestDialGuard(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	f := newFixture(t)
	b := f.add(t, "svc", up.URL, breaker.Settings{FailureThreshold: 1}, func(c *RouteConfig) { c.GuardDial = true })
	resp, body := f.get(t, "/shop/svc/x")
	g.Expect(resp.StatusCode).To(Equal(502))
	g.Expect(jsonError(g, body)).To(ContainSubstring("not allowed: loopback"))
	g.Expect(up.hits.Load()).To(BeZero())
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed), "a refused address is the author's mistake, not the upstream's failure")

	for ip, want := range map[string]string{
		"127.0.0.1": "loopback", "::1": "loopback", "169.254.169.254": "link-local", "fe80::1": "link-local",
		"0.0.0.0": "unspecified", "239.1.2.3": "multicast", "224.0.0.1": "link-local", "10.1.2.3": "the manager's own address", "10.1.2.4": "",
	} {
		g.Expect(refusedAddress(net.ParseIP(ip), []net.IP{net.ParseIP("10.1.2.3")})).To(Equal(want), ip)
	}
}

// The guard's second round: NAT64 wrapping a refused IPv4 address, cloud
// metadata endpoints outside link-local, and the ranges the operator denies.
func TestDialGuardRefusesWrappedAndDeniedAddresses(t *testing.T) {
	own := []net.IP{net.ParseIP("10.1.2.3")}
	_, nodes, _ := net.ParseCIDR("192.168.0.0/16")
	_, apiServer, _ := net.ParseCIDR("10.96.0.1/32")
	guard := dialGuard(own, []*net.IPNet{nodes, apiServer})
	for _, tc := range []struct {
		address, want string // want: part of the refusal; "" allowed
	}{
		{"[64:ff9b::7f00:1]:80", "NAT64 of 127.0.0.1: loopback"},
		{"[64:ff9b::a9fe:a9fe]:80", "NAT64 of 169.254.169.254: link-local"},
		{"[64:ff9b:1::a01:203]:80", "NAT64 of 10.1.2.3: the manager's own address"},
		{"[64:ff9b::c0a8:101]:80", "denied range 192.168.0.0/16"},
		{"[64:ff9b::a01:204]:80", ""},
		{"[fd00:ec2::254]:80", "a cloud metadata endpoint"},
		{"[fd00:ec2::23]:80", "a cloud metadata endpoint"},
		{"100.100.100.200:80", "a cloud metadata endpoint"},
		{"192.168.7.7:8080", "denied range 192.168.0.0/16"},
		{"10.96.0.1:443", "denied range 10.96.0.1/32"},
		{"10.96.0.2:443", ""},
		{"[fd00:ec2::1]:80", ""},
	} {
		t.Run(tc.address, func(t *testing.T) {
			g := NewWithT(t)
			err := guard("tcp", tc.address, nil)
			if tc.want == "" {
				g.Expect(err).NotTo(HaveOccurred())
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring(tc.want)))
		})
	}
}

// Fallbacks of 204 and 304 carry no body.
func TestBodylessFallbacks(t *testing.T) {
	for _, status := range []int{204, 304} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			g := NewWithT(t)
			up := newUpstream(t)
			up.mode.Store("500")
			f := newFixture(t)
			f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1}, withFallback(status, "text/plain", "ignored"))
			f.get(t, "/shop/a/x")
			resp, body := f.get(t, "/shop/a/x")
			g.Expect(resp.StatusCode).To(Equal(status))
			g.Expect(body).To(BeEmpty())
			g.Expect(resp.Header.Get("Content-Length")).To(BeEmpty())
		})
	}
}

// upgrade opens an "echo" upgraded connection through f's proxy to path.
func upgrade(g Gomega, f *fixture, path string) (net.Conn, *bufio.Reader) {
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.proxy.URL, "http://"))
	g.Expect(err).NotTo(HaveOccurred())
	_, _ = io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(resp.StatusCode).To(Equal(101))
	return conn, br
}

// The cap holds across reconfigurations: every reconcile of a busy breaker
// stores a new route, and calls in flight through the old one still count.
func TestConcurrencyCapSurvivesAReconfigure(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	up.mode.Store("block")
	f := newFixture(t)
	b := f.add(t, "a", up.URL, breaker.Settings{}, withMaxConcurrent(2))
	done := holdCalls(g, f, up, "/shop/a/x", 2)
	f.table.Set("shop/a", b, testRoute(t, up.URL, withMaxConcurrent(2), withTimeout(time.Minute))) // a reconcile
	resp, _ := f.get(t, "/shop/a/x")
	g.Expect(resp.StatusCode).To(Equal(503), "still two in flight")
	g.Expect(resp.Header.Get(StateHeader)).To(Equal("saturated"))
	close(up.release)
	g.Expect([]int{<-done, <-done}).To(Equal([]int{200, 200}))
	resp, _ = f.get(t, "/shop/a/x")
	g.Expect(resp.StatusCode).To(Equal(200), "and both slots came back to the new route")
}

// holdCalls starts n calls to path that the "block" upstream holds until
// up.release is closed, and returns once the upstream has all of them; each
// call's status code arrives on the channel when it ends (0: no answer).
func holdCalls(g Gomega, f *fixture, up *upstream, path string, n int) <-chan int {
	done := make(chan int, n)
	for range n {
		go func() {
			resp, err := http.Get(f.proxy.URL + path)
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	g.Eventually(up.hits.Load).Should(Equal(int32(n)))
	return done
}

// A slow call is timed from the request being fully written to the
// response headers: a caller that sends its body slowly makes no slow
// call, an upstream that answers slowly does.
func TestSlowCallsAreTimedFromTheWrittenRequest(t *testing.T) {
	tests := []struct {
		name string
		// slowCaller: the time passes while the caller's body is awaited;
		// otherwise while the upstream, body read, holds its answer.
		slowCaller bool
		want       breaker.State
	}{
		{name: "a caller sending its body slowly", slowCaller: true, want: breaker.StateClosed},
		{name: "an upstream answering slowly", want: breaker.StateOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			started, bodyRead, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(started)
				_, _ = io.Copy(io.Discard, r.Body)
				close(bodyRead)
				<-release
			}))
			defer up.Close()
			f := newFixture(t)
			// The coarse clock the slow-call rule reads moves only when the
			// test says; reads counts its readings (in a call: Allow's, then
			// the written request's).
			var coarse, reads atomic.Int64
			coarse.Store(time.Now().UnixNano())
			coarseNow := func() int64 { reads.Add(1); return coarse.Load() }
			key := breaker.NewKey("shop", "a")
			b := breaker.New(breaker.Settings{
				Window: time.Minute, MinimumRequests: 1, SlowCallDuration: time.Second, SlowCallRateThreshold: 50,
			}, f.clock, breaker.Options{CoarseNow: coarseNow})
			f.table.Set(key, b, testRoute(t, up.URL))
			// The route's series read the clock once, when made: now, not mid-call.
			rt, _ := f.table.get(key)
			rt.metrics()
			before := reads.Load()

			body, send := io.Pipe()
			req, err := http.NewRequest(http.MethodPost, f.proxy.URL+"/shop/a/x", body)
			g.Expect(err).NotTo(HaveOccurred())
			req.ContentLength = 5
			status := make(chan int, 1)
			go func() {
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					status <- 0
					return
				}
				resp.Body.Close()
				status <- resp.StatusCode
			}()
			<-started
			if tt.slowCaller {
				coarse.Add(int64(10 * time.Second))
			}
			_, err = io.WriteString(send, "hello")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(send.Close()).To(Succeed())
			<-bodyRead
			if !tt.slowCaller {
				g.Eventually(reads.Load).Should(BeNumerically(">=", before+2), "the written request was timed")
				coarse.Add(int64(10 * time.Second))
			}
			close(release)
			g.Expect(<-status).To(Equal(http.StatusOK))
			g.Expect(b.Snapshot().State).To(Equal(tt.want))
		})
	}
}

// trustUpstream lets f's proxy reach up's TLS certificate (URL upstreams
// have no trust configuration of their own yet).
func (f *fixture) trustUpstream(up *httptest.Server) {
	p := f.proxy.Config.Handler.(*Proxy)
	p.transport.open.(*http.Transport).TLSClientConfig = up.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
}

// Against an HTTP/2 upstream, by ALPN (https) or by prior knowledge (h2c),
// what Go's client refuses to send is no failure of the upstream's: an
// upgrade HTTP/2 cannot carry, or headers beyond the upstream's advertised
// bound, which it never received.
func TestHTTP2RefusalsAreNoVerdict(t *testing.T) {
	const threshold = 3
	tests := []struct {
		name   string
		header http.Header
		status int
	}{
		{name: "an upgrade that is not WebSocket", status: 400,
			header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"foo"}}},
		{name: "an h2c upgrade", status: 400,
			header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c"}, "Http2-Settings": {"AAMAAABkAAQAoAAAAAIAAAAA"}}},
		{name: "headers beyond the upstream's SETTINGS_MAX_HEADER_LIST_SIZE", status: 431,
			header: http.Header{"X-Big": {strings.Repeat("a", 16<<10)}}},
	}
	for _, h2 := range []string{"https", "h2c"} {
		for _, tt := range tests {
			t.Run(h2+"/"+tt.name, func(t *testing.T) {
				g := NewWithT(t)
				var hits atomic.Int32
				up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					hits.Add(1)
					_, _ = io.WriteString(w, r.Proto)
				}))
				up.Config.MaxHeaderBytes = 4 << 10
				f := newFixture(t)
				var opts []routeOption
				if h2 == "https" {
					up.EnableHTTP2 = true
					up.StartTLS()
					f.trustUpstream(up)
				} else {
					up.Config.Protocols = h2cOnly()
					up.Start()
					opts = append(opts, withH2C())
				}
				defer up.Close()
				b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: threshold}, opts...)
				// A first call sees the upstream's settings in.
				_, body := f.get(t, "/shop/a/")
				g.Expect(body).To(Equal("HTTP/2.0"))

				for range threshold + 1 {
					req, err := http.NewRequest(http.MethodGet, f.proxy.URL+"/shop/a/x", nil)
					g.Expect(err).NotTo(HaveOccurred())
					for k, vv := range tt.header {
						req.Header[k] = vv
					}
					resp, err := http.DefaultClient.Do(req)
					g.Expect(err).NotTo(HaveOccurred())
					text, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					g.Expect(resp.StatusCode).To(Equal(tt.status), string(text))
				}
				g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed))
				g.Expect(b.Snapshot().Failures).To(BeZero())
				g.Expect(hits.Load()).To(Equal(int32(1)), "the upstream got only the first call")
			})
		}
	}
}

// A caller that stops reading its answer holds its call, and its slot
// under maxConcurrentRequests, for one stream idle timeout, not for ever:
// every write to it has a deadline, on an upgraded connection too.
func TestCallersThatStopReadingLetGo(t *testing.T) {
	flood := bytes.Repeat([]byte("x"), 64<<10)
	tests := []struct {
		name string
		// upgrade: the call is a WebSocket upgrade, flooded after the 101.
		upgrade bool
	}{
		{name: "a 64 MiB answer"},
		{name: "an upgraded connection", upgrade: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/shop/a/x" {
					_, _ = io.WriteString(w, "ok")
					return
				}
				if r.Header.Get("Upgrade") == "" {
					w.Header().Set("Content-Length", strconv.Itoa(1024*len(flood)))
					for range 1024 { // 64 MiB: more than loopback's socket buffers hold
						if _, err := w.Write(flood); err != nil {
							return
						}
					}
					return
				}
				conn, rw, err := w.(http.Hijacker).Hijack()
				if err != nil {
					return
				}
				defer conn.Close()
				_, _ = io.WriteString(rw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
				for range 1024 { // 64 MiB at most, until the proxy lets go
					if _, err := rw.Write(flood); err != nil || rw.Flush() != nil {
						return
					}
				}
			}))
			defer up.Close()
			f := newFixture(t)
			f.add(t, "a", up.URL, breaker.Settings{}, withMaxConcurrent(2), withStreamIdle(300*time.Millisecond))
			addr := realServer(t, f)
			request := "GET /shop/a/big HTTP/1.1\r\nHost: p\r\n\r\n"
			if tt.upgrade {
				request = "GET /shop/a/ws HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
			}
			for range 2 {
				conn, err := net.Dial("tcp", addr)
				g.Expect(err).NotTo(HaveOccurred())
				defer conn.Close() // open, and never read
				_, err = io.WriteString(conn, request)
				g.Expect(err).NotTo(HaveOccurred())
			}
			rt, _ := f.table.get("shop/a")
			g.Eventually(rt.inFlight.Load).Should(Equal(int64(2)))
			g.Eventually(rt.inFlight.Load).WithTimeout(30*time.Second).Should(BeZero(), "both calls let go")
			resp, body := f.get(t, "/shop/a/x")
			g.Expect(resp.StatusCode).To(Equal(200), body)
		})
	}
}

// The process-wide cap counts every route's calls: beyond it callers get
// 503 saturated, and the breaker whose call was refused sees nothing.
func TestProcessWideConcurrencyCap(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	up.mode.Store("block")
	f := newFixtureWith(t, Options{MaxConcurrentRequests: 2})
	f.add(t, "a", up.URL, breaker.Settings{})
	b := f.add(t, "b", up.URL, breaker.Settings{FailureThreshold: 1})
	done := holdCalls(g, f, up, "/shop/a/x", 2)
	resp, body := f.get(t, "/shop/b/x")
	g.Expect(resp.StatusCode).To(Equal(503))
	g.Expect(resp.Header.Get(StateHeader)).To(Equal("saturated"))
	g.Expect(jsonError(g, body)).To(Equal("the proxy has 2 calls in flight already"))
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed), "no verdict")
	close(up.release)
	g.Expect([]int{<-done, <-done}).To(Equal([]int{200, 200}))
	resp, _ = f.get(t, "/shop/b/x")
	g.Expect(resp.StatusCode).To(Equal(200), "the slots came back")
}

// Listen's bound on connections: a caller beyond it is accepted only once
// another connection closes, so at most that many are ever open.
func TestListenBoundsConnections(t *testing.T) {
	g := NewWithT(t)
	l, err := Listen("127.0.0.1:0", 1)
	g.Expect(err).NotTo(HaveOccurred())
	// Counted between the bound and the server: a connection counts from
	// its Accept until its Close begins (which gives its slot back; the
	// server's ConnState would report the close only after that).
	counted := &countingListener{Listener: l}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
	}
	go func() { _ = srv.Serve(counted) }()
	defer srv.Close()
	const request = "GET / HTTP/1.1\r\nHost: p\r\n\r\n"
	first, err := net.Dial("tcp", l.Addr().String())
	g.Expect(err).NotTo(HaveOccurred())
	_, err = io.WriteString(first, request)
	g.Expect(err).NotTo(HaveOccurred())
	resp, err := http.ReadResponse(bufio.NewReader(first), nil)
	g.Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	// The first stays open (keep-alive) while the second asks.
	second, err := net.Dial("tcp", l.Addr().String())
	g.Expect(err).NotTo(HaveOccurred())
	defer second.Close()
	_, err = io.WriteString(second, request)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(first.Close()).To(Succeed())
	resp, err = http.ReadResponse(bufio.NewReader(second), nil)
	g.Expect(err).NotTo(HaveOccurred(), "the second is served once the first closed")
	resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(200))
	g.Expect(counted.most.Load()).To(Equal(int32(1)), "never two open at once")
}

// countingListener counts its connections open, and the most at once.
type countingListener struct {
	net.Listener
	open, most atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	n := l.open.Add(1)
	for m := l.most.Load(); n > m && !l.most.CompareAndSwap(m, n); m = l.most.Load() {
	}
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// An upstream's answer cannot steer the proxy: its state header does not
// reach the caller, its 508 is judged whatever loop header it carries, and
// a service that copies incoming headers onto its own calls through the
// proxy is forwarded, not taken for a loop.
func TestUpstreamsCannotSteerTheProxy(t *testing.T) {
	t.Run("a state header of the upstream's", func(t *testing.T) {
		g := NewWithT(t)
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set(StateHeader, "open")
			w.Header().Set(loopHeader, "1")
		}))
		defer up.Close()
		f := newFixture(t)
		f.add(t, "a", up.URL, breaker.Settings{})
		resp, _ := f.get(t, "/shop/a/")
		g.Expect(resp.StatusCode).To(Equal(200))
		g.Expect(resp.Header).NotTo(HaveKey(StateHeader))
		g.Expect(resp.Header).NotTo(HaveKey(loopHeader))
	})

	for _, forged := range []struct {
		name string
		mark func(r *http.Request) string
	}{
		{"a plain loop header", func(*http.Request) string { return "1" }},
		{"the hop mark echoed", func(r *http.Request) string { return r.Header.Get(hopHeader) }},
	} {
		t.Run("a 508 with "+forged.name, func(t *testing.T) {
			g := NewWithT(t)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set(loopHeader, forged.mark(r))
				w.WriteHeader(http.StatusLoopDetected)
			}))
			defer up.Close()
			f := newFixture(t)
			b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1})
			resp, _ := f.get(t, "/shop/a/")
			g.Expect(resp.StatusCode).To(Equal(http.StatusLoopDetected))
			g.Expect(resp.Header).NotTo(HaveKey(loopHeader))
			g.Expect(b.Snapshot().State).To(Equal(breaker.StateOpen), "the upstream's own 508 is a failure")
		})
	}

	t.Run("a service that copies incoming headers onto its calls", func(t *testing.T) {
		g := NewWithT(t)
		last := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "end") }))
		defer last.Close()
		f := newFixture(t)
		copying := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			req, _ := http.NewRequest(http.MethodGet, f.proxy.URL+"/shop/b/", nil)
			req.Header = r.Header.Clone() // Via and hop mark included
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			w.WriteHeader(resp.StatusCode)
			_, _ = io.Copy(w, resp.Body)
		}))
		defer copying.Close()
		f.add(t, "a", copying.URL, breaker.Settings{})
		f.add(t, "b", last.URL, breaker.Settings{})
		resp, body := f.get(t, "/shop/a/")
		g.Expect(resp.StatusCode).To(Equal(200), body)
		g.Expect(body).To(Equal("end"))
	})
}

func TestClimbs(t *testing.T) {
	for _, tt := range []struct {
		path string
		want bool
	}{
		{"", false}, {"/", false}, {"/orders/1", false}, {"/.well-known/x", false}, {"/a.b/c..d", false},
		{"/...", false}, {"/a//b", false},
		{"/..", true}, {"/../admin", true}, {"/a/../../admin", true}, {"/./x", true}, {"/a/.", true},
		{"/%2e%2e/admin", true}, {"/%2E./admin", true}, {"/..%2fadmin", true}, {"/..%5Cadmin", true}, {`/..\admin`, true},
		{"/%2e%2e%2e", false}, {"/%2f", false},
	} {
		NewWithT(t).Expect(climbs(tt.path)).To(Equal(tt.want), tt.path)
	}
}

// A caller's path cannot climb out of a URL upstream's base path; an
// upstream cannot flood the caller with informational answers.
func TestPathsAndInformationalAnswersAreBounded(t *testing.T) {
	t.Run("dot segments", func(t *testing.T) {
		g := NewWithT(t)
		up := newUpstream(t)
		f := newFixture(t)
		f.add(t, "a", up.URL+"/api", breaker.Settings{})
		addr := realServer(t, f)
		for _, path := range []string{"/shop/a/../../admin", "/shop/a/%2e%2e/admin", "/shop/a/x/..%2f..%2fadmin"} {
			g.Expect(rawExchange(g, addr, "GET "+path+" HTTP/1.1\r\nHost: p\r\n\r\n", false)).To(Equal(400), path)
		}
		g.Expect(up.hits.Load()).To(BeZero())
		resp, _ := f.get(t, "/shop/a/orders/1.json")
		g.Expect(resp.StatusCode).To(Equal(200))
		req, _ := up.lastRequest()
		g.Expect(req.URL.Path).To(Equal("/api/orders/1.json"))
	})

	t.Run("informational answers", func(t *testing.T) {
		tests := []struct {
			hints  int
			status int
			state  breaker.State
		}{
			{hints: maxInformational, status: 200, state: breaker.StateClosed},
			{hints: maxInformational + 1, status: 502, state: breaker.StateOpen},
		}
		for _, tt := range tests {
			g := NewWithT(t)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				for range tt.hints {
					w.Header().Set("Link", "</a.css>; rel=preload")
					w.WriteHeader(http.StatusEarlyHints)
				}
				_, _ = io.WriteString(w, "final")
			}))
			f := newFixture(t)
			b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1})
			var hints int
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				Got1xxResponse: func(int, textproto.MIMEHeader) error { hints++; return nil },
			})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.proxy.URL+"/shop/a/", nil)
			resp, err := http.DefaultClient.Do(req)
			g.Expect(err).NotTo(HaveOccurred())
			resp.Body.Close()
			g.Expect(resp.StatusCode).To(Equal(tt.status), "%d hints", tt.hints)
			g.Expect(hints).To(BeNumerically("<=", maxInformational))
			g.Expect(b.Snapshot().State).To(Equal(tt.state))
			up.Close()
		}
	})
}
