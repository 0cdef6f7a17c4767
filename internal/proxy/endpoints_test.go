package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// endpointsFixture is a Service route over n loopback upstreams (the unit
// tests' endpoints: the dial guard, which refuses loopback, is the
// envtests' business), each counting its calls and failing on command.
type endpointsFixture struct {
	*fixture
	ups     []*httptest.Server
	hits    []atomic.Int32
	failing []atomic.Bool
	host    atomic.Value // the last Host header seen
}

func newEndpointsFixture(t *testing.T, n int) *endpointsFixture {
	f := &endpointsFixture{fixture: newFixture(t), hits: make([]atomic.Int32, n), failing: make([]atomic.Bool, n)}
	f.proxy.Config.Handler.(*Proxy).transport.guard = nil
	for i := range n {
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.hits[i].Add(1)
			f.host.Store(r.Host)
			if f.failing[i].Load() {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
			_, _ = io.WriteString(w, "ok")
		}))
		t.Cleanup(up.Close)
		f.ups = append(f.ups, up)
	}
	return f
}

func (f *endpointsFixture) endpoints(which ...int) []Endpoint {
	var eps []Endpoint
	for _, i := range which {
		u, _ := url.Parse(f.ups[i].URL)
		eps = append(eps, Endpoint{Addr: netip.MustParseAddrPort(u.Host), Pod: "pod-" + string(rune('a'+i))})
	}
	return eps
}

func (f *endpointsFixture) route(t *testing.T, b *breaker.Breaker, ej *Ejection, which ...int) {
	cfg := testRoute(t, "http://api.shop.svc.cluster.local:80")
	cfg.Host, cfg.Endpoints, cfg.Ejection = "api.shop.svc.cluster.local:80", f.endpoints(which...), ej
	f.table.Set("shop/api", b, cfg)
}

func (f *endpointsFixture) counts() []int32 {
	out := make([]int32, len(f.hits))
	for i := range f.hits {
		out[i] = f.hits[i].Swap(0)
	}
	return out
}

// Calls over one keep-alive connection spread over the endpoints (per
// call, not per connection), with the Service's name as Host; a removed
// endpoint gets none of the next calls.
func TestServiceCallsAreBalancedPerCall(t *testing.T) {
	g := NewWithT(t)
	f := newEndpointsFixture(t, 3)
	b := breaker.New(breaker.Settings{}, f.clock, breaker.Options{})
	f.route(t, b, nil, 0, 1, 2)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	call := func() {
		resp, err := client.Get(f.proxy.URL + "/shop/api/x")
		g.Expect(err).NotTo(HaveOccurred())
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		g.Expect(resp.StatusCode).To(Equal(200))
	}
	for range 900 {
		call()
	}
	g.Expect(f.counts()).To(HaveEach(BeNumerically("~", 300, 100)), "900 calls over 3 endpoints")
	g.Expect(f.host.Load()).To(Equal("api.shop.svc.cluster.local:80"))

	f.route(t, b, nil, 0, 2)
	for range 300 {
		call()
	}
	got := f.counts()
	g.Expect(got[1]).To(BeZero(), "the removed endpoint gets no calls")
	g.Expect(got[0] + got[2]).To(Equal(int32(300)))
}

// A failing endpoint among healthy ones is ejected after its consecutive
// failures; the breaker, counting every call, stays Closed. The percentage
// bound keeps the rest in.
func TestFailingEndpointIsEjected(t *testing.T) {
	g := NewWithT(t)
	f := newEndpointsFixture(t, 3)
	b := breaker.New(breaker.Settings{FailureThreshold: 5}, f.clock, breaker.Options{})
	var ejected []Endpoint
	f.table.OnEjection(func(_ breaker.Key, e Endpoint, until time.Time) { ejected = append(ejected, e) })
	ej := &Ejection{ConsecutiveFailures: 3, BaseTime: time.Hour, MaxTime: 2 * time.Hour, MaxPercent: 50}
	f.route(t, b, ej, 0, 1, 2)
	f.failing[1].Store(true)
	f.failing[2].Store(true)
	for range 300 {
		resp, _ := f.get(t, "/shop/api/x")
		_ = resp
		if len(ejected) == 1 {
			break
		}
	}
	g.Expect(ejected).To(HaveLen(1), "one is ejected")
	out := ejected[0]
	f.counts()
	for range 100 {
		f.get(t, "/shop/api/x")
	}
	got := f.counts()
	idx := map[string]int{"pod-b": 1, "pod-c": 2}[out.Pod]
	g.Expect(got[idx]).To(BeZero(), "the ejected endpoint gets no calls")
	g.Expect(ejected).To(HaveLen(1), "(1+1)/3 > 50%: the second failing one stays in")
	views := f.table.Endpoints("shop/api")
	g.Expect(views).To(HaveLen(3))
	n := 0
	for _, v := range views {
		if !v.EjectedUntil.IsZero() {
			n++
			g.Expect(v.Pod).To(Equal(out.Pod))
		}
	}
	g.Expect(n).To(Equal(1))
}

func TestPickIsAllocationFree(t *testing.T) {
	for _, n := range []int{3, 100} {
		eps := make([]*endpoint, n)
		for i := range eps {
			eps[i] = newEndpoint(Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 80)})
		}
		now := time.Now().UnixNano()
		allocs := testing.AllocsPerRun(1000, func() { _ = pick(eps, now) })
		NewWithT(t).Expect(allocs).To(BeZero())
	}
}

func BenchmarkPick(b *testing.B) {
	for _, n := range []int{3, 100} {
		eps := make([]*endpoint, n)
		for i := range eps {
			eps[i] = newEndpoint(Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 80)})
		}
		b.Run(strconv.Itoa(n)+"-endpoints", func(b *testing.B) {
			now := time.Now().UnixNano()
			b.ReportAllocs()
			for b.Loop() {
				_ = pick(eps, now)
			}
		})
	}
}
