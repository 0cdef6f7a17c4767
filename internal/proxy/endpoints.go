package proxy

import (
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint is one address a Service upstream's calls go to: what the
// controller read of the Service's EndpointSlices.
type Endpoint struct {
	Addr netip.AddrPort
	// Pod is the slice's targetRef, when it names a Pod.
	Pod string
}

// Ejection configures per-endpoint outlier ejection (RouteConfig.Ejection).
type Ejection struct {
	// ConsecutiveFailures in a row eject an endpoint.
	ConsecutiveFailures uint32
	// BaseTime × n is the n-th ejection in a row, at most MaxTime.
	BaseTime, MaxTime time.Duration
	// MaxPercent of the endpoints may be ejected at once, ((ejected+1) ×
	// 100 / endpoints at most this); one of two or more always may.
	MaxPercent int
}

// MaxIdleConnsPerEndpoint bounds each endpoint's pool of idle upstream
// connections (IdleConnTimeout closes them after 90 s). An endpoint that
// leaves its Service's slices has its idle connections closed at once.
const MaxIdleConnsPerEndpoint = 64

// endpoint is an Endpoint's live state. It outlives route updates while
// the address stays in the set: its calls in flight, its ejection and its
// connection pool go on.
type endpoint struct {
	Endpoint
	// host is the address as the URL's host, dialled as it is.
	host     string
	inFlight atomic.Int64
	// connPool is the endpoint's own connections, made on its first call;
	// removed marks an endpoint no longer in the set, whose pool is closed
	// as its last calls end.
	connPool
	removed atomic.Bool
	// ejectedUntil is UnixNano; 0 or past: not ejected.
	ejectedUntil atomic.Int64
	mu           sync.Mutex // guards the counters below
	failures     uint32
	// ejections counts ejections in a row (the multiplier); returned is
	// when the last one ended, from which it decays.
	ejections uint32
	returned  int64
}

func newEndpoint(e Endpoint) *endpoint {
	return &endpoint{Endpoint: e, host: e.Addr.String()}
}

func (e *endpoint) ejected(now int64) bool { return e.ejectedUntil.Load() > now }

// connPool is one address's or route's connections, made on the first
// call: an endpoint's, or a URL upstream route's own. HTTP/1.1 upstreams
// get the lean client (http1.go), h2c and https ones Go's transport.
type connPool struct {
	transport atomic.Pointer[http.Transport]
	http1     atomic.Pointer[http1Pool]
}

// getHTTP1 returns the pool's HTTP/1.1 client, making it with make on
// first use.
func (p *connPool) getHTTP1(make func() *http1Pool) *http1Pool {
	if c := p.http1.Load(); c != nil {
		return c
	}
	c := make()
	if p.http1.CompareAndSwap(nil, c) {
		return c
	}
	return p.http1.Load()
}

// get returns the pool's transport, making it with make on first use.
func (p *connPool) get(make func() *http.Transport) *http.Transport {
	if t := p.transport.Load(); t != nil {
		return t
	}
	t := make()
	if p.transport.CompareAndSwap(nil, t) {
		return t
	}
	return p.transport.Load()
}

// closeIdle closes the pool's idle connections.
func (p *connPool) closeIdle() {
	if t := p.transport.Load(); t != nil {
		t.CloseIdleConnections()
	}
	if c := p.http1.Load(); c != nil {
		c.CloseIdleConnections()
	}
}

// done ends a call to e; the last call to an endpoint that left the set
// closes its pool.
func (e *endpoint) done() {
	if e.inFlight.Add(-1) == 0 && e.removed.Load() {
		e.closeIdle()
	}
}

// pick chooses the endpoint for a call: the less busy of two picked at
// random among those not ejected (power of two choices on calls in
// flight, as Envoy's LEAST_REQUEST). Nil when there is none. It does not
// allocate.
func pick(endpoints []*endpoint, now int64) *endpoint {
	n := len(endpoints)
	switch n {
	case 0:
		return nil
	case 1:
		if endpoints[0].ejected(now) {
			return nil
		}
		return endpoints[0]
	}
	i := rand.IntN(n)     //nolint:gosec // balancing needs no secret
	j := rand.IntN(n - 1) //nolint:gosec // balancing needs no secret
	if j >= i {
		j++
	}
	a, b := endpoints[i], endpoints[j]
	aOK, bOK := !a.ejected(now), !b.ejected(now)
	switch {
	case aOK && bOK:
		if b.inFlight.Load() < a.inFlight.Load() {
			return b
		}
		return a
	case aOK:
		return a
	case bOK:
		return b
	}
	for k := range n { // both ejected: any that is not
		if e := endpoints[(i+k)%n]; !e.ejected(now) {
			return e
		}
	}
	return nil
}

// outcome counts a call's verdict against e, and ejects it when the
// policy says; it returns the ejection's end, zero when none began.
func (e *endpoint) outcome(failed bool, now int64, p *Ejection, all []*endpoint) time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !failed {
		e.failures = 0
		return time.Time{}
	}
	if e.failures++; e.failures < p.ConsecutiveFailures || e.ejected(now) {
		return time.Time{}
	}
	ejected := 0
	for _, other := range all {
		if other.ejected(now) {
			ejected++
		}
	}
	alwaysOne := ejected == 0 && len(all) >= 2
	if (ejected+1)*100 > p.MaxPercent*len(all) && !alwaysOne {
		return time.Time{} // too many out already: it stays in
	}
	// One step of decay per healthy BaseTime since the last ejection ended.
	if e.returned > 0 && p.BaseTime > 0 {
		steps := uint32(min((now-e.returned)/int64(p.BaseTime), int64(e.ejections)))
		e.ejections -= steps
	}
	e.ejections++
	d := min(time.Duration(e.ejections)*p.BaseTime, p.MaxTime)
	until := now + int64(d)
	e.ejectedUntil.Store(until)
	e.returned = until
	e.failures = 0
	return time.Unix(0, until)
}

// EndpointView is what the proxy knows of one endpoint now, for the status.
type EndpointView struct {
	Endpoint
	// EjectedUntil is zero unless the endpoint is ejected.
	EjectedUntil time.Time
}

// carryEndpoints returns the live state for set, taking over the state of
// old's endpoints that are still in it, and marks and closes the rest.
func carryEndpoints(old []*endpoint, set []Endpoint) []*endpoint {
	if len(set) == 0 && len(old) == 0 {
		return nil
	}
	byAddr := make(map[netip.AddrPort]*endpoint, len(old))
	for _, e := range old {
		byAddr[e.Addr] = e
	}
	live := make([]*endpoint, 0, len(set))
	for _, want := range set {
		if e, ok := byAddr[want.Addr]; ok && e.Pod == want.Pod {
			live = append(live, e)
			delete(byAddr, want.Addr)
			continue
		}
		live = append(live, newEndpoint(want))
	}
	for _, gone := range byAddr {
		gone.removed.Store(true)
		gone.closeIdle() // calls in flight finish; closeIdle again as they end
	}
	return live
}
