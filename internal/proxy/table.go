package proxy

import (
	"sync/atomic"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
	"github.com/circuitbreaker-io/operator/internal/readmostly"
)

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
