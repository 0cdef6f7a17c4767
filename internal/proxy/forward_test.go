package proxy

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// seen is what the recording upstream received, or what a caller got back.
type seen struct {
	status         int
	header         http.Header
	query, body    string
	trailer        http.Header
	informational  []int
	informedHeader http.Header
	// readErr is why the caller's read of the body failed (cut short).
	readErr string
}

// recordingUpstream answers by path and keeps the last request it saw.
type recordingUpstream struct {
	*httptest.Server
	mu   sync.Mutex
	last seen
	// release lets /stream send its second line.
	release chan struct{}
	// hungUp has the caller's address each time /close-after closed its
	// connection.
	hungUp chan string
}

func newRecordingUpstream(t *testing.T) *recordingUpstream {
	u := &recordingUpstream{release: make(chan struct{}, 1), hungUp: make(chan string, 16)}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.last = seen{header: r.Header.Clone(), query: r.URL.RawQuery, body: string(body)}
		u.mu.Unlock()
		switch strings.TrimPrefix(r.URL.Path, "/shop/x") {
		case "/echo":
			// Hop-by-hop headers of the upstream's connection: not the caller's.
			w.Header().Set("Connection", "X-Resp-Hop")
			w.Header().Set("X-Resp-Hop", "1")
			w.Header().Set("Keep-Alive", "timeout=5")
			w.Header().Set("X-Resp", "kept")
			_, _ = io.WriteString(w, "ok")
		case "/trailers":
			w.Header().Set("Trailer", "X-Announced")
			_, _ = io.WriteString(w, "body")
			w.Header().Set("X-Announced", "a")
			w.Header().Set(http.TrailerPrefix+"X-Late", "b")
		case "/hints":
			w.Header().Set("Link", "</app.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			_, _ = io.WriteString(w, "final")
		case "/gzip":
			// Compressed for a client that asked for it (as Go's
			// transport does when its caller did not).
			if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
				_, _ = io.WriteString(w, "plain")
				return
			}
			w.Header().Set("Content-Encoding", "gzip")
			// Typed: the answer has no length once decompressed, and a
			// front that flushes its headers first sniffs no type.
			w.Header().Set("Content-Type", "text/plain")
			zw := gzip.NewWriter(w)
			_, _ = io.WriteString(zw, "unzipped by the client")
			_ = zw.Close()
		case "/short", "/close-after":
			// Raw answers: a length the body does not reach, or a
			// keep-alive answer after which the upstream closes its
			// connection anyway (the next call finds it closed).
			conn, buf, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			if r.URL.Path == "/short" {
				_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfour")
			} else {
				_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
			_ = buf.Flush()
			_ = conn.Close()
			if r.URL.Path == "/close-after" {
				u.hungUp <- r.RemoteAddr
			}
		case "/stream":
			_, _ = io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			select {
			case <-u.release:
			case <-r.Context().Done():
				return
			}
			_, _ = io.WriteString(w, "second\n")
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *recordingUpstream) seen() seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

// TestForwardsAsReverseProxyDoes sends the same calls through the proxy
// and through a bare httputil.ReverseProxy (Rewrite with SetXForwarded, the
// same transport) to one recording upstream. The upstream and the caller
// must see the same, but for what is the proxy's own (its Via entry and
// hop mark) and what differs by address (X-Forwarded-Host).
func TestForwardsAsReverseProxyDoes(t *testing.T) {
	up := newRecordingUpstream(t)
	target, _ := url.Parse(up.URL)
	bareTransport := NewTransport()
	bare := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.URL.Path, pr.Out.URL.RawPath = strings.TrimPrefix(pr.In.URL.Path, "/shop/x"), ""
			pr.SetXForwarded()
		},
		Transport:  bareTransport,
		BufferPool: NewBufferPool(),
	})
	t.Cleanup(bare.Close)
	f := newFixture(t)
	f.add(t, "x", up.URL, breaker.Settings{})

	tests := []struct {
		name         string
		method, path string
		header       http.Header
		body         string
		noUserAgent  bool
		// chunked sends the body without a length; cutShort expects the
		// answer's body to break; twice sends the call a second time
		// (what is compared is the second).
		chunked, cutShort, twice bool
		// plainCaller sends no Accept-Encoding (Go's client asks for gzip).
		plainCaller  bool
		wantUpstream func(g Gomega, s seen)
		wantCaller   func(g Gomega, s seen)
	}{
		{
			name: "hop-by-hop and forwarding headers", method: http.MethodGet, path: "/echo?x=1",
			header: http.Header{
				"Connection": {"X-Hop"}, "X-Hop": {"1"}, "Keep-Alive": {"5"}, "Proxy-Authorization": {"Basic eA=="},
				"Te": {"trailers"}, "Forwarded": {"for=203.0.113.9"}, "X-Forwarded-For": {"203.0.113.9"},
				"X-Forwarded-Proto": {"https"}, "X-Keep": {"yes"},
			},
			wantUpstream: func(g Gomega, s seen) {
				for _, gone := range []string{"Connection", "X-Hop", "Keep-Alive", "Proxy-Authorization", "Forwarded"} {
					g.Expect(s.header).NotTo(HaveKey(gone))
				}
				g.Expect(s.header.Get("Te")).To(Equal("trailers"))
				g.Expect(s.header.Get("X-Forwarded-For")).To(Equal("127.0.0.1"), "what the caller claimed is not passed on")
				g.Expect(s.header.Get("X-Forwarded-Proto")).To(Equal("http"))
				g.Expect(s.header.Get("X-Keep")).To(Equal("yes"))
				g.Expect(s.query).To(Equal("x=1"))
			},
			wantCaller: func(g Gomega, s seen) {
				g.Expect(s.header).NotTo(HaveKey("X-Resp-Hop"))
				g.Expect(s.header).NotTo(HaveKey("Keep-Alive"))
				g.Expect(s.header.Get("X-Resp")).To(Equal("kept"))
				g.Expect(s.body).To(Equal("ok"))
			},
		},
		{
			name: "no User-Agent", method: http.MethodGet, path: "/echo", noUserAgent: true,
			wantUpstream: func(g Gomega, s seen) {
				g.Expect(s.header).NotTo(HaveKey("User-Agent"), "not Go's default one")
			},
		},
		{
			name: "a query a server may read differently", method: http.MethodGet, path: "/echo?a=1;b=2&c=%zz&d=4",
			wantUpstream: func(g Gomega, s seen) {
				g.Expect(s.query).To(Equal("d=4"), "re-encoded from what Go parses of it")
			},
		},
		{
			name: "a body", method: http.MethodPost, path: "/echo", body: `{"qty":3}`,
			header: http.Header{"Content-Type": {"application/json"}},
			wantUpstream: func(g Gomega, s seen) {
				g.Expect(s.body).To(Equal(`{"qty":3}`))
				g.Expect(s.header.Get("Content-Type")).To(Equal("application/json"))
			},
		},
		{
			name: "trailers, announced and not", method: http.MethodGet, path: "/trailers",
			header: http.Header{"Te": {"trailers"}},
			wantCaller: func(g Gomega, s seen) {
				g.Expect(s.body).To(Equal("body"))
				g.Expect(s.trailer.Get("X-Announced")).To(Equal("a"))
				g.Expect(s.trailer.Get("X-Late")).To(Equal("b"))
			},
		},
		{
			name: "an informational answer before the final one", method: http.MethodGet, path: "/hints",
			wantCaller: func(g Gomega, s seen) {
				g.Expect(s.informational).To(Equal([]int{http.StatusEarlyHints}))
				g.Expect(s.informedHeader.Get("Link")).To(Equal("</app.css>; rel=preload"))
				g.Expect(s.header).NotTo(HaveKey("Link"), "the hint's headers are not the final answer's")
				g.Expect(s.body).To(Equal("final"))
			},
		},
		{
			name: "a chunked request body", method: http.MethodPost, path: "/echo", body: "sent without a length", chunked: true,
			wantUpstream: func(g Gomega, s seen) {
				g.Expect(s.body).To(Equal("sent without a length"))
			},
		},
		{
			name: "an answer shorter than its Content-Length", method: http.MethodGet, path: "/short", cutShort: true,
			wantCaller: func(g Gomega, s seen) {
				g.Expect(s.readErr).To(Or(Equal("EOF"), ContainSubstring("unexpected EOF")), "the answer is cut, not passed on as whole")
			},
		},
		{
			name: "a connection the upstream closes between calls", method: http.MethodGet, path: "/close-after", twice: true,
			wantCaller: func(g Gomega, s seen) {
				g.Expect(s.status).To(Equal(http.StatusOK))
				g.Expect(s.body).To(Equal("ok"))
			},
		},
		{
			name: "the same, for a call that may not be replayed", method: http.MethodPost, path: "/close-after", twice: true,
			wantCaller: func(g Gomega, s seen) {
				g.Expect(s.status).To(Equal(http.StatusOK))
				g.Expect(s.body).To(Equal("ok"))
			},
		},
		{
			name: "an answer to HEAD, without a body", method: http.MethodHead, path: "/echo",
			wantCaller: func(g Gomega, s seen) {
				g.Expect(s.header.Get("Content-Length")).To(Equal("2"))
				g.Expect(s.body).To(BeEmpty())
			},
		},
		{
			name: "a compressed answer to a caller that did not ask for one", method: http.MethodGet, path: "/gzip",
			plainCaller: true,
			wantUpstream: func(g Gomega, s seen) {
				g.Expect(s.header.Get("Accept-Encoding")).To(Equal("gzip"))
			},
			wantCaller: func(g Gomega, s seen) {
				g.Expect(s.body).To(Equal("unzipped by the client"))
				g.Expect(s.header).NotTo(HaveKey("Content-Encoding"))
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			var upstreamSaw, callerGot [2]seen
			opts := sendOptions{noUserAgent: tt.noUserAgent, chunked: tt.chunked, cutShort: tt.cutShort, plain: tt.plainCaller}
			if tt.twice {
				// Our second call finds its pooled connection dead (its
				// end reached the proxy), not merely about to die: the
				// proxy must not send on it. It is compared with one
				// call through ReverseProxy on a fresh connection (the
				// transport's read loop learns of a close in its own
				// time, which no test can wait for).
				send(g, tt.method, f.proxy.URL+"/shop/x"+tt.path, tt.header, tt.body, opts)
				closed := <-up.hungUp
				g.Eventually(func() bool { return f.idleConnDead(closed) }).Should(BeTrue())
				bareTransport.CloseIdleConnections()
				defer func() {
					<-up.hungUp // our second call's
					<-up.hungUp // ReverseProxy's
					bareTransport.CloseIdleConnections()
				}()
			}
			for i, front := range []string{f.proxy.URL, bare.URL} {
				callerGot[i] = send(g, tt.method, front+"/shop/x"+tt.path, tt.header, tt.body, opts)
				upstreamSaw[i] = up.seen()
			}
			ours, theirs := upstreamSaw[0], upstreamSaw[1]
			g.Expect(ours.header["Via"]).To(Equal([]string{"1.1 circuit-breaker-test"}))
			g.Expect(ours.header[hopHeader]).To(ConsistOf(HaveLen(22)), "one hop mark")
			for _, h := range []http.Header{ours.header, theirs.header} {
				h.Del("Via")
				h.Del(hopHeader)
				h.Del("X-Forwarded-Host")
			}
			g.Expect(ours).To(Equal(theirs), "the upstream saw the same from both")
			for i := range callerGot {
				callerGot[i].header.Del("Date")
			}
			g.Expect(callerGot[0]).To(Equal(callerGot[1]), "the caller got the same from both")
			if tt.wantUpstream != nil {
				tt.wantUpstream(g, ours)
			}
			if tt.wantCaller != nil {
				tt.wantCaller(g, callerGot[0])
			}
		})
	}
}

// idleConnDead reports whether the idle connection of route shop/x whose
// local address is addr (if any is idle) has seen its upstream's close.
func (f *fixture) idleConnDead(addr string) bool {
	rt, _ := f.table.get(breaker.NewKey("shop", "x"))
	pool := rt.pool.http1.Load()
	pool.mu.Lock()
	defer pool.mu.Unlock()
	for _, pc := range pool.idle {
		if pc.conn.LocalAddr().String() == addr {
			return pc.peerClosed()
		}
	}
	return true
}

// sendOptions: noUserAgent sends none; chunked sends the body without a
// length; cutShort expects the body's read to fail; plain asks for no
// compression.
type sendOptions struct{ noUserAgent, chunked, cutShort, plain bool }

// send sends one request and reads everything the caller gets back.
func send(g Gomega, method, rawURL string, header http.Header, body string, opts sendOptions) seen {
	var got seen
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			got.informational = append(got.informational, code)
			got.informedHeader = http.Header(h).Clone()
			return nil
		},
	})
	var reader io.Reader
	if body != "" {
		reader = strings.NewReader(body)
		if opts.chunked {
			reader = struct{ io.Reader }{reader} // no length to see
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, rawURL, reader)
	g.Expect(err).NotTo(HaveOccurred())
	for k, vv := range header {
		req.Header[k] = vv
	}
	if opts.noUserAgent {
		req.Header["User-Agent"] = []string{""} // Go's client then sends none
	}
	client := http.DefaultClient
	if opts.plain {
		client = &http.Client{Transport: &http.Transport{DisableCompression: true}}
	}
	resp, err := client.Do(req)
	if opts.cutShort && err != nil {
		// Cut before the headers reached the caller.
		var urlErr *url.Error
		g.Expect(errors.As(err, &urlErr)).To(BeTrue())
		got.readErr = urlErr.Err.Error()
		return got
	}
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if opts.cutShort {
		g.Expect(err).To(HaveOccurred())
		got.readErr = err.Error()
	} else {
		g.Expect(err).NotTo(HaveOccurred())
	}
	got.status, got.header, got.body, got.trailer = resp.StatusCode, resp.Header, string(b), resp.Trailer
	return got
}

// A stream with no length reaches the caller as it comes: the first line
// arrives while the upstream still holds back the second.
func TestStreamsAreFlushedAsTheyCome(t *testing.T) {
	g := NewWithT(t)
	up := newRecordingUpstream(t)
	f := newFixture(t)
	f.add(t, "x", up.URL, breaker.Settings{})

	resp, err := http.Get(f.proxy.URL + "/shop/x/stream")
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	g.Expect(resp.ContentLength).To(Equal(int64(-1)))
	lines := bufio.NewReader(resp.Body)
	first, err := lines.ReadString('\n')
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(first).To(Equal("first\n"), "read before the upstream sends more")
	up.release <- struct{}{}
	second, err := lines.ReadString('\n')
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(second).To(Equal("second\n"))
}

// An upstream that switches protocols on a call that asked for no switch
// gets no connection to the caller: the caller gets 502, and the upstream,
// which broke the protocol, a failure.
func TestUnaskedUpgradeIsRefused(t *testing.T) {
	g := NewWithT(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(rw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n")
		_ = rw.Flush()
	}))
	t.Cleanup(up.Close)
	f := newFixture(t)
	b := f.add(t, "x", up.URL, breaker.Settings{FailureThreshold: 1})

	resp, body := f.get(t, "/shop/x/")
	g.Expect(resp.StatusCode).To(Equal(http.StatusBadGateway))
	g.Expect(jsonError(g, body)).To(ContainSubstring("upstream of circuit breaker 'shop/x'"))
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateOpen), "an unasked 101 is the upstream's failure")
}

// A caller that asks for 100 Continue and an upstream that answers without
// wanting the body: the caller gets the answer, as through ReverseProxy,
// and the call ends (it does not wait for a body nobody asked for).
func TestExpectContinueToAnUpstreamThatDoesNotRead(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "no need")
	}))
	t.Cleanup(up.Close)
	target, _ := url.Parse(up.URL)
	bare := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: NewTransport(),
	})
	t.Cleanup(bare.Close)
	f := newFixture(t)
	f.add(t, "x", up.URL, breaker.Settings{})
	addr := realServer(t, f)
	const raw = "POST /shop/x/upload HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
	for _, front := range []struct{ name, addr string }{
		{"ReverseProxy", strings.TrimPrefix(bare.URL, "http://")},
		{"the proxy", addr},
	} {
		t.Run(front.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(rawExchange(g, front.addr, raw, false)).To(Equal(http.StatusOK))
		})
	}
	g := NewWithT(t)
	g.Eventually(func() int64 { rt, _ := f.table.get("shop/x"); return rt.inFlight.Load() }).Should(BeZero(), "the call ended")
}
