package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

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
		// h2: the caller speaks HTTP/2 (prior knowledge) and the answer is a
		// stream, whose writes have no deadline: the idle timer resets it.
		h2 bool
	}{
		{name: "a 64 MiB answer"},
		{name: "an upgraded connection", upgrade: true},
		{name: "an HTTP/2 caller's stream", h2: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			var streamsWhole atomic.Int32
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/shop/a/x" {
					_, _ = io.WriteString(w, "ok")
					return
				}
				if strings.HasSuffix(r.URL.Path, "/stream") {
					for range 1024 { // 64 MiB, flushed as it goes: a stream
						if _, err := w.Write(flood); err != nil {
							return
						}
						w.(http.Flusher).Flush()
					}
					streamsWhole.Add(1) // the caller took it all: it did read
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
				if tt.h2 {
					caller := &http.Transport{Protocols: new(http.Protocols)}
					caller.Protocols.SetUnencryptedHTTP2(true)
					defer caller.CloseIdleConnections()
					req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/shop/a/stream", nil)
					g.Expect(err).NotTo(HaveOccurred())
					resp, err := caller.RoundTrip(req)
					g.Expect(err).NotTo(HaveOccurred())
					g.Expect(resp.ProtoMajor).To(Equal(2))
					defer resp.Body.Close() // open, and never read
					continue
				}
				conn, err := net.Dial("tcp", addr)
				g.Expect(err).NotTo(HaveOccurred())
				defer conn.Close() // open, and never read
				_, err = io.WriteString(conn, request)
				g.Expect(err).NotTo(HaveOccurred())
			}
			rt, _ := f.table.get("shop/a")
			g.Eventually(rt.inFlight.Load).Should(Equal(int64(2)))
			g.Eventually(rt.inFlight.Load).WithTimeout(30*time.Second).Should(BeZero(), "both calls let go")
			g.Expect(streamsWhole.Load()).To(BeZero(), "let go before the end, not taken whole")
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
