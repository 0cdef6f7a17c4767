package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

// RoutesReady is the manager's readiness check: it fails until the cache
// has synced and every CircuitBreaker that existed then has its route
// (forwarding or refused), so a restarted replica never answers 404 for a
// breaker that exists. Once it passes it stays passed: an API server that
// goes away later does not take the data plane out of its Service.
type RoutesReady struct {
	cache  cache.Cache
	routes *proxy.Table

	ready   atomic.Bool
	mu      sync.Mutex
	pending map[breaker.Key]struct{} // nil until listed
}

// NewRoutesReady returns the readiness check over the manager's cache and the proxy's routes.
func NewRoutesReady(c cache.Cache, routes *proxy.Table) *RoutesReady {
	return &RoutesReady{cache: c, routes: routes}
}

// Check is a healthz.Checker.
func (r *RoutesReady) Check(req *http.Request) error {
	if r.ready.Load() {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ctx, cancel := context.WithTimeout(req.Context(), time.Second)
	defer cancel()
	if r.pending == nil {
		if !r.cache.WaitForCacheSync(ctx) {
			return errors.New("the cache has not synced yet")
		}
		// Only the names are read: no copy of 10,000 breakers.
		var list cbv1.CircuitBreakerList
		if err := r.cache.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
			return fmt.Errorf("listing CircuitBreakers: %w", err)
		}
		r.pending = make(map[breaker.Key]struct{}, len(list.Items))
		for _, cb := range list.Items {
			r.pending[breaker.NewKey(cb.Namespace, cb.Name)] = struct{}{}
		}
	}
	// A breaker without a route was usually not reconciled yet; a few may
	// have been deleted since the listing. Each check looks up at most
	// maxGoneLookups of them in the cache: probed several times a second
	// during a start with thousands pending, looking up every one took a
	// tenth of the replica's CPU, away from the reconciles it waits for.
	lookups := 0
	for key := range r.pending {
		switch {
		case r.routes.Has(key):
			delete(r.pending, key)
		case lookups < maxGoneLookups:
			lookups++
			if r.gone(ctx, key) {
				delete(r.pending, key)
			}
		}
	}
	if len(r.pending) > 0 {
		return fmt.Errorf("%d CircuitBreakers have no route yet", len(r.pending))
	}
	r.ready.Store(true)
	r.pending = nil // a map once sized for every breaker
	return nil
}

// Passed reports whether the check has passed (it then stays passed).
func (r *RoutesReady) Passed() bool { return r.ready.Load() }

// maxGoneLookups bounds the cache lookups of one readiness check.
const maxGoneLookups = 64

// gone reports whether the breaker was deleted since it was listed.
func (r *RoutesReady) gone(ctx context.Context, key breaker.Key) bool {
	namespace, name := key.Split()
	var cb cbv1.CircuitBreaker
	return apierrors.IsNotFound(r.cache.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &cb, client.UnsafeDisableDeepCopy))
}
