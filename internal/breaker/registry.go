package breaker

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/circuitbreaker-io/operator/internal/cowmap"
)

// Key names a breaker as "<namespace>/<name>", the form the proxy finds in a
// request path, so a lookup needs no allocation.
type Key string

// NewKey returns the key of the breaker namespace/name.
func NewKey(namespace, name string) Key { return Key(namespace + "/" + name) }

// Split returns the namespace and name of the key.
func (k Key) Split() (namespace, name string) {
	namespace, name, _ = strings.Cut(string(k), "/")
	return namespace, name
}

// RegistryOptions are the hooks of a Registry, called without locks held.
type RegistryOptions struct {
	// OnTransition is called on every state change and reset, from the
	// goroutine that caused it.
	OnTransition func(Key, Transition)
	// OnCountsChanged is called by Run at most once per interval for each
	// breaker whose counts changed without a transition.
	OnCountsChanged func(Key)
}

// Registry holds the live breakers. Lookups are lock-free, as the table is
// read on every request and written only when a resource changes.
type Registry struct {
	clock   clock.WithTicker
	opts    RegistryOptions
	entries cowmap.Map[Key, *entry]
}

type entry struct {
	breaker *Breaker
	// countsChanged is set by the breaker and cleared by Run.
	countsChanged atomic.Bool
}

// NewRegistry returns an empty registry.
func NewRegistry(clk clock.WithTicker, opts RegistryOptions) *Registry {
	return &Registry{clock: clk, opts: opts}
}

// Get returns the breaker for key.
func (r *Registry) Get(key Key) (*Breaker, bool) {
	e, ok := r.entries.Load(key)
	if !ok {
		return nil, false
	}
	return e.breaker, true
}

// Upsert creates the breaker for key, or applies settings to the existing one
// (keeping its state). A newly created breaker starts from saved when given,
// e.g. the state recorded in a resource's status before a restart.
func (r *Registry) Upsert(key Key, settings Settings, saved *Snapshot) (b *Breaker, created bool) {
	e, _ := r.entries.Update(key, func(e *entry, loaded bool) (*entry, bool) {
		if loaded {
			return e, true
		}
		created = true
		e = &entry{}
		e.breaker = New(settings, r.clock, Options{
			OnTransition: func(t Transition) {
				if r.opts.OnTransition != nil {
					r.opts.OnTransition(key, t)
				}
			},
			OnChange: func() { e.countsChanged.Store(true) },
		})
		if saved != nil {
			e.breaker.restore(*saved)
		}
		return e, true
	})
	if !created {
		// Outside the table's lock: an update may fire a transition.
		e.breaker.Update(settings)
	}
	return e.breaker, created
}

// Delete removes the breaker for key.
func (r *Registry) Delete(key Key) {
	r.entries.Update(key, func(*entry, bool) (*entry, bool) { return nil, false })
}

// Keys returns the keys of all breakers, sorted.
func (r *Registry) Keys() []Key {
	m := r.entries.Snapshot()
	keys := make([]Key, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Run reports coalesced count changes every interval until ctx ends.
func (r *Registry) Run(ctx context.Context, interval time.Duration) {
	ticker := r.clock.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
			r.flushCountChanges()
		}
	}
}

func (r *Registry) flushCountChanges() {
	if r.opts.OnCountsChanged == nil {
		return
	}
	for k, e := range r.entries.Snapshot() {
		if e.countsChanged.Swap(false) {
			r.opts.OnCountsChanged(k)
		}
	}
}
