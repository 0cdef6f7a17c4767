package proxy

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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
