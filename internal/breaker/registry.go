package breaker

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
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

// Registry holds the live breakers. Lookups are lock-free: writers replace an
// immutable map, which suits a table read on every request and written only
// when a resource changes.
type Registry struct {
	clock clock.WithTicker
	opts  RegistryOptions

	writeMu sync.Mutex
	entries atomic.Pointer[map[Key]*entry]
}

type entry struct {
	breaker *Breaker
	// countsChanged is set by the breaker and cleared by Run.
	countsChanged atomic.Bool
}

// NewRegistry returns an empty registry.
func NewRegistry(clk clock.WithTicker, opts RegistryOptions) *Registry {
	r := &Registry{clock: clk, opts: opts}
	r.entries.Store(&map[Key]*entry{})
	return r
}

// Get returns the breaker for key.
func (r *Registry) Get(key Key) (*Breaker, bool) {
	e, ok := (*r.entries.Load())[key]
	if !ok {
		return nil, false
	}
	return e.breaker, true
}

// Upsert creates the breaker for key, or applies settings to the existing one
// (keeping its state). A newly created breaker starts from saved when given,
// e.g. the state recorded in a resource's status before a restart.
func (r *Registry) Upsert(key Key, settings Settings, saved *Snapshot) (b *Breaker, created bool) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	old := *r.entries.Load()
	if e, ok := old[key]; ok {
		e.breaker.Update(settings)
		return e.breaker, false
	}
	e := &entry{}
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
	next := make(map[Key]*entry, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[key] = e
	r.entries.Store(&next)
	return e.breaker, true
}

// Delete removes the breaker for key.
func (r *Registry) Delete(key Key) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	old := *r.entries.Load()
	if _, ok := old[key]; !ok {
		return
	}
	next := make(map[Key]*entry, len(old))
	for k, v := range old {
		if k != key {
			next[k] = v
		}
	}
	r.entries.Store(&next)
}

// Keys returns the keys of all breakers, sorted.
func (r *Registry) Keys() []Key {
	m := *r.entries.Load()
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
	for k, e := range *r.entries.Load() {
		if e.countsChanged.Swap(false) {
			r.opts.OnCountsChanged(k)
		}
	}
}
