package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
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
