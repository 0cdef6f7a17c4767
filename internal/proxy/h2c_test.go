package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// withH2C makes a test route speak h2c to its upstream.
func withH2C() routeOption { return func(c *RouteConfig) { c.H2C = true } }

// h2cOnly is what an h2c upstream (a gRPC server) speaks: HTTP/2 with
// prior knowledge, and no HTTP/1.1 at all.
func h2cOnly() *http.Protocols {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return p
}

// h2cUpstream answers what it saw: the protocol, the caller's trailer and
// TE header; it announces and sends a trailer of its own, and streams
// /stream in two parts, the second once release is closed.
type h2cUpstream struct {
	*httptest.Server
	release chan struct{}
	hits    atomic.Int32
}

func newH2CUpstream(t *testing.T) *h2cUpstream {
	u := &h2cUpstream{release: make(chan struct{})}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		w.Header().Set("Trailer", "X-Answer-Trailer")
		if r.URL.Path == "/stream" {
			_, _ = io.WriteString(w, "first;")
			_ = http.NewResponseController(w).Flush()
			<-u.release
			_, _ = io.WriteString(w, "second")
			return
		}
		body, _ := io.ReadAll(r.Body) // fills r.Trailer
		_, _ = io.WriteString(w, strings.Join([]string{r.Proto, string(body), r.Trailer.Get("X-Call-Trailer"), r.Header.Get("Te")}, ";"))
		w.Header().Set("X-Answer-Trailer", "from upstream")
	}))
	u.Config.Protocols = h2cOnly()
	u.Start()
	t.Cleanup(u.Close)
	return u
}

// An h2c route speaks HTTP/2 with prior knowledge to its upstream (which
// speaks nothing else): trailers pass both ways, TE: trailers (which gRPC
// servers require) goes on, and a streaming answer reaches the caller as
// it comes.
func TestH2CUpstream(t *testing.T) {
	g := NewWithT(t)
	up := newH2CUpstream(t)
	f := newFixture(t)
	b := f.add(t, "grpc", up.URL, breaker.Settings{FailureThreshold: 1}, withH2C())

	body := io.MultiReader(strings.NewReader("ping")) // no length: chunked, so trailers can follow
	req, err := http.NewRequest(http.MethodPost, f.proxy.URL+"/shop/grpc/call", body)
	g.Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Te", "trailers")
	req.Trailer = http.Header{"X-Call-Trailer": {"from caller"}}
	resp, err := http.DefaultClient.Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	answer, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(string(answer)).To(Equal("HTTP/2.0;ping;from caller;trailers"), "HTTP/2, the body, the caller's trailer, TE")
	g.Expect(resp.Trailer.Get("X-Answer-Trailer")).To(Equal("from upstream"))

	// The first part arrives while the upstream still holds the second.
	resp, err = http.Get(f.proxy.URL + "/shop/grpc/stream")
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	first := make(chan string, 1)
	go func() {
		buf := make([]byte, len("first;"))
		_, _ = io.ReadFull(resp.Body, buf)
		first <- string(buf)
	}()
	g.Eventually(first).Should(Receive(Equal("first;")))
	close(up.release)
	rest, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(rest)).To(Equal("second"))
	g.Expect(resp.Trailer.Get("X-Answer-Trailer")).To(BeEmpty(), "announced, never sent")
	g.Expect(b.Snapshot().State).To(Equal(breaker.StateClosed))
	g.Expect(up.hits.Load()).To(Equal(int32(2)))
}

// Reconfiguring a route to another protocol gives it new connections: an
// HTTP/1.1 route made h2c speaks HTTP/2 from its next call, and back.
func TestProtocolChangeTakesTheNextCall(t *testing.T) {
	g := NewWithT(t)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}))
	both := new(http.Protocols)
	both.SetHTTP1(true)
	both.SetUnencryptedHTTP2(true)
	up.Config.Protocols = both
	up.Start()
	defer up.Close()
	f := newFixture(t)
	b := breaker.New(breaker.Settings{}, f.clock, breaker.Options{})
	for _, tt := range []struct {
		h2c  bool
		want string
	}{{false, "HTTP/1.1"}, {true, "HTTP/2.0"}, {true, "HTTP/2.0"}, {false, "HTTP/1.1"}} {
		cfg := testRoute(t, up.URL)
		cfg.H2C = tt.h2c
		f.table.Set("shop/a", b, cfg)
		_, body := f.get(t, "/shop/a/")
		g.Expect(body).To(Equal(tt.want), "h2c %v", tt.h2c)
	}
}

// Calls sharing an h2c connection each carry the hop mark of that
// connection's address (made once for the connection), which the proxy
// accepts as its own hop's.
func TestH2CCallsCarryTheirConnectionsHopMark(t *testing.T) {
	g := NewWithT(t)
	type seen struct{ remote, hop string }
	got := make(chan seen, 8)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.RemoteAddr, r.Header.Get(hopHeader)}
	}))
	up.Config.Protocols = h2cOnly()
	up.Start()
	t.Cleanup(up.Close)
	f := newFixture(t)
	f.add(t, "grpc", up.URL, breaker.Settings{}, withH2C())
	p := f.proxy.Config.Handler.(*Proxy)

	var first seen
	for i := range 4 {
		resp, _ := f.get(t, "/shop/grpc/")
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
		s := <-got
		g.Expect(p.marks.valid(s.hop, hopLabel, s.remote)).To(BeTrue(), "the mark of the connection the call came on")
		if i == 0 {
			first = s
		}
		g.Expect(s).To(Equal(first), "one connection, one mark")
	}
}
