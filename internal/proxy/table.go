// Package proxy is the data plane: it forwards /<namespace>/<name>/<path> to
// that breaker's upstream, asks the breaker first, classifies the outcome and
// serves the fallback while the circuit rejects calls.
package proxy

import (
	"net/url"
	"time"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/cowmap"
)

// DefaultRequestTimeout applies when a spec has none, as the schema's default.
const DefaultRequestTimeout = 10 * time.Second

// route is what the proxy needs to serve one breaker. Routes are immutable:
// a spec change stores a new one.
type route struct {
	key          breaker.Key
	breaker      *breaker.Breaker
	target       *url.URL
	timeout      time.Duration
	failureCodes StatusCodes
	fallback     *fallback
	// refused, when set, is why the breaker may not forward (403).
	refused string
	metrics routeMetrics
}

type fallback struct {
	status      int
	contentType string
	body        []byte
}

// Table holds the routes by breaker key. Reads are lock-free, as every
// request reads it and only resource changes write it.
type Table struct {
	metrics *Metrics
	routes  cowmap.Map[breaker.Key, *route]
}

// NewTable returns an empty table whose routes count into metrics.
func NewTable(metrics *Metrics) *Table {
	return &Table{metrics: metrics}
}

// Set routes key through b to target, configured by spec.
func (t *Table) Set(key breaker.Key, b *breaker.Breaker, target *url.URL, spec *cbv1.CircuitBreakerSpec) error {
	codes := spec.FailureStatusCodes
	if len(codes) == 0 {
		codes = []string{"5xx"}
	}
	failureCodes, err := ParseStatusCodes(codes)
	if err != nil {
		return err
	}
	rt := &route{
		key:          key,
		breaker:      b,
		target:       target,
		timeout:      DefaultRequestTimeout,
		failureCodes: failureCodes,
		metrics:      t.metrics.forRoute(key),
	}
	if spec.RequestTimeout != nil && spec.RequestTimeout.Duration > 0 {
		rt.timeout = spec.RequestTimeout.Duration
	}
	if fb := spec.Fallback; fb != nil {
		rt.fallback = &fallback{status: int(fb.StatusCode), contentType: fb.ContentType, body: []byte(fb.Body)}
		if rt.fallback.status == 0 {
			rt.fallback.status = 503
		}
	}
	if old, loaded := t.swap(key, rt); !loaded || old.refused != "" {
		t.metrics.SetState(key, b.Snapshot().State)
	}
	return nil
}

// Refuse makes the proxy answer 403 with reason for key. A refused breaker
// has no live state, so it has no metrics either.
func (t *Table) Refuse(key breaker.Key, reason string) {
	if old, loaded := t.swap(key, &route{key: key, refused: reason}); loaded && old.refused == "" {
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

func (t *Table) get(key breaker.Key) (*route, bool) {
	return t.routes.Load(key)
}
