// Package proxy is the data plane: it forwards /<namespace>/<name>/<path> to
// that breaker's upstream, asks the breaker first, classifies the outcome and
// serves the fallback while the circuit rejects calls. It knows nothing of
// the CircuitBreaker resource: the controller hands it complete RouteConfigs.
package proxy

import (
	"net/url"
	"sync/atomic"
	"time"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
	"github.com/circuitbreaker-io/operator/internal/readmostly"
)

// RouteConfig is everything the proxy needs to forward one breaker's calls.
// Every field is required: defaults are the controller's business.
type RouteConfig struct {
	// Target is the upstream's base URL; the rest of the caller's path is appended.
	Target *url.URL
	// GuardDial refuses to dial loopback, link-local, unspecified, multicast
	// and the manager's own addresses (Service upstreams).
	GuardDial bool
	// Timeout bounds the wait for the upstream's response headers; a
	// timeout is a failure.
	Timeout time.Duration
	// StreamIdleTimeout ends a streaming response or upgraded connection
	// after no byte went either way for this long (no verdict).
	StreamIdleTimeout time.Duration
	// MaxConcurrent is how many calls may be in flight at once; beyond it
	// callers get 503 saturated (no verdict).
	MaxConcurrent int64
	// FailureCodes are the upstream answers that count as failures.
	FailureCodes StatusCodes
	// Fallback, when set, is served while the circuit rejects calls;
	// otherwise callers get 503 with a JSON error.
	Fallback *Fallback
}

// Fallback is the response served while the circuit rejects calls.
type Fallback struct {
	StatusCode  int
	ContentType string
	Body        []byte
}

// route is what the proxy needs to serve one breaker. Routes are immutable:
// a spec change stores a new one.
type route struct {
	RouteConfig
	key     breaker.Key
	breaker *breaker.Breaker
	// refused, when set, is why the breaker may not forward, answered with
	// refusedStatus.
	refused       string
	refusedStatus int
	// series are the breaker's metric series, created on its first call:
	// a breaker that never sees traffic (or a transition) has none.
	series   atomic.Pointer[metrics.Route]
	registry *metrics.Breakers
	// inFlight counts the calls being forwarded through this breaker's
	// route; a reconfigured route takes it over, so that calls in flight
	// through the old one still count against the cap.
	inFlight *atomic.Int64
}

// Table holds the routes by breaker key. Reads are lock-free, as every
// request reads it and only resource changes write it.
type Table struct {
	metrics *metrics.Breakers
	routes  readmostly.Map[breaker.Key, *route]
}

// NewTable returns an empty table whose routes count into series.
func NewTable(series *metrics.Breakers) *Table {
	return &Table{metrics: series}
}

// Set routes key through b as cfg says.
func (t *Table) Set(key breaker.Key, b *breaker.Breaker, cfg RouteConfig) {
	rt := &route{RouteConfig: cfg, key: key, breaker: b, registry: t.metrics, inFlight: new(atomic.Int64)}
	var replacedBreaker bool
	t.routes.Update(key, func(old *route, loaded bool) (*route, bool) {
		switch {
		case loaded && old.breaker == b:
			// The same breaker, reconfigured (every reconcile of a busy
			// breaker): its series and its calls in flight go on.
			rt.series.Store(old.series.Load())
			rt.inFlight = old.inFlight
		case loaded && old.breaker != nil:
			replacedBreaker = true
		}
		return rt, true
	})
	if replacedBreaker {
		// A new breaker under the same key (the resource was created
		// again): its series start afresh.
		t.metrics.Forget(key)
	}
}

// metrics returns the route's series, creating them (and the state series)
// on first use.
func (rt *route) metrics() *metrics.Route {
	if m := rt.series.Load(); m != nil {
		return m
	}
	m := rt.registry.Route(rt.key)
	if rt.series.CompareAndSwap(nil, &m) {
		rt.registry.SetState(rt.key, rt.breaker.Snapshot().State)
	}
	return rt.series.Load()
}

// Refuse makes the proxy answer status with reason for key, without a
// verdict. A refused breaker has no live state, so it has no metrics either.
func (t *Table) Refuse(key breaker.Key, status int, reason string) {
	if old, loaded := t.swap(key, &route{key: key, refused: reason, refusedStatus: status}); loaded && old.refused == "" {
		t.metrics.Forget(key)
	}
}

// Delete removes the route and its metrics.
func (t *Table) Delete(key breaker.Key) {
	if _, loaded := t.swap(key, nil); loaded {
		t.metrics.Forget(key)
	}
}

// swap stores rt for key (deletes it when nil) and returns the route it replaced.
func (t *Table) swap(key breaker.Key, rt *route) (old *route, loaded bool) {
	t.routes.Update(key, func(prev *route, ok bool) (*route, bool) {
		old, loaded = prev, ok
		return rt, rt != nil
	})
	return old, loaded
}

// Has reports whether key has a route, forwarding or refused.
func (t *Table) Has(key breaker.Key) bool {
	_, ok := t.routes.Load(key)
	return ok
}

func (t *Table) get(key breaker.Key) (*route, bool) {
	return t.routes.Load(key)
}
