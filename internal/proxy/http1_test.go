package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// connCountingUpstream answers "ok" once release is closed (nil: at once),
// and counts the connections it saw open and closed.
type connCountingUpstream struct {
	*httptest.Server
	opened, closed atomic.Int64
}

func newConnCountingUpstream(t *testing.T, release <-chan struct{}) *connCountingUpstream {
	u := &connCountingUpstream{}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if release != nil {
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	}))
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			u.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			u.closed.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

func getThrough(g Gomega, pool *http1Pool, url string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	g.Expect(err).NotTo(HaveOccurred())
	resp, err := pool.RoundTrip(req)
	g.Expect(err).NotTo(HaveOccurred())
	body, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(resp.Body.Close()).To(Succeed())
	g.Expect(string(body)).To(Equal("ok"))
}

func (p *http1Pool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// The lean client keeps at most maxIdle connections idle: of four calls in
// flight at once, two connections stay for the next calls, two are closed.
func TestHTTP1PoolBoundsIdleConnections(t *testing.T) {
	g := NewWithT(t)
	release := make(chan struct{})
	up := newConnCountingUpstream(t, release)
	pool := newHTTP1Pool(nil, 2)
	t.Cleanup(pool.CloseIdleConnections)

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { getThrough(g, pool, up.URL) })
	}
	g.Eventually(up.opened.Load).Should(BeEquivalentTo(4), "four calls in flight at once, each on its own connection")
	close(release)
	wg.Wait()
	g.Expect(pool.idleCount()).To(Equal(2))
	g.Eventually(up.closed.Load).Should(BeEquivalentTo(2))

	getThrough(g, pool, up.URL)
	getThrough(g, pool, up.URL)
	g.Expect(up.opened.Load()).To(BeEquivalentTo(4), "the next calls reuse the idle ones")
}

// A connection idle for the pool's idle timeout is closed without a call
// to notice it; the next call dials afresh.
func TestHTTP1PoolClosesIdledOutConnections(t *testing.T) {
	g := NewWithT(t)
	up := newConnCountingUpstream(t, nil)
	pool := newHTTP1Pool(nil, 4)
	pool.idleTimeout = 10 * time.Millisecond
	t.Cleanup(pool.CloseIdleConnections)

	getThrough(g, pool, up.URL)
	g.Eventually(up.closed.Load).Should(BeEquivalentTo(1))
	g.Expect(pool.idleCount()).To(BeZero())
	getThrough(g, pool, up.URL)
	g.Expect(up.opened.Load()).To(BeEquivalentTo(2))
}

// A pool whose address changes (a route's target did) closes what leads
// to the old one: no call goes to the old address on a kept connection.
func TestHTTP1PoolFollowsAChangedAddress(t *testing.T) {
	g := NewWithT(t)
	first, second := newConnCountingUpstream(t, nil), newConnCountingUpstream(t, nil)
	pool := newHTTP1Pool(nil, 4)
	t.Cleanup(pool.CloseIdleConnections)

	getThrough(g, pool, first.URL)
	getThrough(g, pool, second.URL)
	g.Eventually(first.closed.Load).Should(BeEquivalentTo(1))
	g.Expect(second.opened.Load()).To(BeEquivalentTo(1))
}

// writeHead writes what Request.Write writes for a request without a body,
// line for line but for the order of the header fields; what it leaves to
// Request.Write it does not touch.
func TestWriteHeadIsRequestWrite(t *testing.T) {
	tests := []struct {
		name, method, url string
		header            http.Header
		host              string
		fallsBack         bool
	}{
		{name: "GET", method: http.MethodGet, url: "http://10.0.0.1:8080/a/b?c=d", header: http.Header{"User-Agent": {""}, "X-A": {"1", "2"}, "Accept": {"*/*"}}},
		{name: "a default method", url: "http://u/", header: http.Header{"User-Agent": {"ua"}}},
		{name: "no User-Agent: Go's default", method: http.MethodGet, url: "http://u/"},
		{name: "a padded User-Agent and values", method: http.MethodGet, url: "http://u/", header: http.Header{"User-Agent": {" ua\t"}, "X-Pad": {"  v "}}},
		{name: "an empty value and a key without values", method: http.MethodGet, url: "http://u/", header: http.Header{"X-Empty": {""}, "X-None": {}}},
		{name: "POST without a body gets a length", method: http.MethodPost, url: "http://u/p", header: http.Header{"Content-Length": {"0"}}},
		{name: "PUT", method: http.MethodPut, url: "http://u/p"},
		{name: "PATCH", method: http.MethodPatch, url: "http://u/p"},
		{name: "DELETE does not", method: http.MethodDelete, url: "http://u/p"},
		{name: "HEAD", method: http.MethodHead, url: "http://u/p"},
		{
			name: "Host, Transfer-Encoding and Trailer headers are not written", method: http.MethodGet, url: "http://u/",
			header: http.Header{"Host": {"x"}, "Transfer-Encoding": {"chunked"}, "Trailer": {"X"}},
		},
		{name: "a Host other than the URL's", method: http.MethodGet, url: "http://10.0.0.1/", host: "svc.ns"},
		{name: "an IPv6 host", method: http.MethodGet, url: "http://[fdcb::1]:80/"},
		{name: "an IPv6 zone is left to Request.Write", method: http.MethodGet, url: "http://[fe80::1%25eth0]:80/", fallsBack: true},
		{name: "a non-ASCII host is left to Request.Write", method: http.MethodGet, url: "http://u/", host: "bücher.example", fallsBack: true},
		{name: "an invalid host is left to Request.Write", method: http.MethodGet, url: "http://u/", host: "a b", fallsBack: true},
		{name: "CONNECT is left to Request.Write", method: http.MethodConnect, url: "http://u:443", fallsBack: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			req, err := http.NewRequest(tt.method, tt.url, nil)
			g.Expect(err).NotTo(HaveOccurred())
			if tt.header != nil {
				req.Header = tt.header
			}
			if tt.host != "" {
				req.Host = tt.host
			}
			var ours, theirs strings.Builder
			pc := &http1Conn{bw: bufio.NewWriter(&ours)}
			wrote := pc.writeHead(req)
			g.Expect(pc.bw.Flush()).To(Succeed())
			if tt.fallsBack {
				g.Expect(wrote).To(BeFalse())
				g.Expect(ours.String()).To(BeEmpty())
				return
			}
			g.Expect(wrote).To(BeTrue())
			g.Expect(req.Write(&theirs)).To(Succeed())
			oursLines, theirLines := strings.Split(ours.String(), "\r\n"), strings.Split(theirs.String(), "\r\n")
			g.Expect(oursLines[:2]).To(Equal(theirLines[:2]), "the request line and Host first")
			g.Expect(oursLines).To(ConsistOf(theirLines))
			g.Expect(ours.String()).To(HaveSuffix("\r\n\r\n"))
		})
	}
}
