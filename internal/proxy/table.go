package proxy

import (
	"sync/atomic"
	"time"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
	"github.com/circuitbreaker-io/operator/internal/readmostly"
)

// Table holds the routes by breaker key. Reads are lock-free, as every
// request reads it and only resource changes write it.
type Table struct {
	metrics *metrics.Breakers
	routes  readmostly.Map[breaker.Key, *route]
	// hosts routes calls by Host to the breakers exposed as Services.
	hosts hostIndex
	// onEjection is told of each endpoint ejection (set before serving).
	onEjection func(breaker.Key, Endpoint, time.Time)
}

// OnEjection sets fn to be told of every endpoint ejection: which
// breaker's, which endpoint, until when. It runs on the call's goroutine
// and must not block. Set it before the table serves.
func (t *Table) OnEjection(fn func(key breaker.Key, e Endpoint, until time.Time)) {
	t.onEjection = fn
}

// ejected counts an ejection and tells the hook.
func (t *Table) ejected(key breaker.Key, e Endpoint, until time.Time) {
	t.metrics.EndpointEjected(key)
	if t.onEjection != nil {
		t.onEjection(key, e, until)
	}
}

// Endpoints is what the proxy knows now of key's endpoints (a Service
// upstream's), for the status; nil for other routes.
func (t *Table) Endpoints(key breaker.Key) []EndpointView {
	rt, ok := t.routes.Load(key)
	if !ok || len(rt.endpoints) == 0 {
		return nil
	}
	now := time.Now().UnixNano()
	views := make([]EndpointView, len(rt.endpoints))
	for i, e := range rt.endpoints {
		views[i].Endpoint = e.Endpoint
		if until := e.ejectedUntil.Load(); until > now {
			views[i].EjectedUntil = time.Unix(0, until)
		}
	}
	return views
}

// endpointCounts yields the endpoint counts of every Service upstream's
// route, for circuitbreaker_endpoints at each scrape.
func (t *Table) endpointCounts(yield func(key breaker.Key, ready, ejected int) bool) {
	now := time.Now().UnixNano()
	t.routes.Range(func(key breaker.Key, rt *route) bool {
		if rt.Host == "" {
			return true
		}
		ejected := 0
		for _, e := range rt.endpoints {
			if e.ejected(now) {
				ejected++
			}
		}
		return yield(key, len(rt.endpoints), ejected)
	})
}

// NewTable returns an empty table whose routes count into series.
func NewTable(series *metrics.Breakers) *Table {
	t := &Table{metrics: series}
	series.CollectEndpoints(t.endpointCounts)
	return t
}

// Set routes key through b as cfg says.
func (t *Table) Set(key breaker.Key, b *breaker.Breaker, cfg RouteConfig) {
	rt := &route{RouteConfig: cfg, key: key, breaker: b, registry: t.metrics, inFlight: new(atomic.Int64), onEjection: t.ejected}
	var replacedBreaker bool
	t.routes.Update(key, func(old *route, loaded bool) (*route, bool) {
		var oldEndpoints []*endpoint
		var oldPool *connPool
		switch {
		case loaded && sameTransport(&old.RouteConfig, &cfg):
			oldEndpoints, oldPool = old.endpoints, old.pool
		case loaded:
			// Another protocol or trust: connections start afresh (and
			// so do the endpoints' ejections, a rare price).
			carryEndpoints(old.endpoints, nil)
			if old.pool != nil {
				// Calls in flight finish; their connections idle out.
				old.pool.closeIdle()
			}
		}
		rt.endpoints = carryEndpoints(oldEndpoints, cfg.Endpoints)
		// The live endpoints hold them from here on; a second copy per
		// route would only take memory (0.2 KiB a Service upstream).
		rt.Endpoints = nil
		if cfg.Host == "" && cfg.ownTransport() {
			rt.pool = oldPool
			if rt.pool == nil {
				rt.pool = new(connPool)
			}
		}
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

// Expose routes calls whose Host names Service service in key's
// namespace (spec.expose) to key's route; service "" stops that.
func (t *Table) Expose(key breaker.Key, service string) {
	t.hosts.expose(key, service)
}

// Delete removes the route, its Host route and its metrics.
func (t *Table) Delete(key breaker.Key) {
	t.hosts.expose(key, "")
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
	if loaded {
		carryEndpoints(old.endpoints, nil) // their pools close
		if old.pool != nil {
			old.pool.closeIdle()
		}
	}
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
