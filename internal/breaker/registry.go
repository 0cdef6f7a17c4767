package breaker

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/circuitbreaker-io/operator/internal/readmostly"
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

// Registry holds the live breakers. Lookups are lock-free, as the table is
// read on every request and written only when a resource changes.
//
// Subscribers are told of every transition (OnTransition) and, coalesced by
// Run, of count changes (OnCountsChanged). A breaker that was deleted or
// replaced tells nobody anything any more: a call still in flight when its
// resource went away cannot bring the breaker's traces back.
type Registry struct {
	clock   clock.WithTicker
	entries readmostly.Map[Key, *entry]

	subscribeMu     sync.Mutex
	onTransition    atomic.Pointer[[]func(Key, Transition)]
	onCountsChanged atomic.Pointer[[]func(Key)]

	// coarse is UnixNano, advanced every CoarseResolution while any
	// breaker keeps a rate window: what such breakers read per call
	// instead of the system clock. Without windowed breakers nothing
	// ticks, and an idle manager stays idle.
	coarse       atomic.Int64
	coarseWanted atomic.Bool
	coarseOnce   sync.Once
	runCtx       atomic.Pointer[context.Context]
}

type entry struct {
	key     Key
	uid     string
	breaker *Breaker
	// countsChanged is set by the breaker and cleared by Run.
	countsChanged atomic.Bool
	// retired is set when the entry leaves the registry.
	retired atomic.Bool
}

// NewRegistry returns an empty registry.
func NewRegistry(clk clock.WithTicker) *Registry {
	r := &Registry{clock: clk}
	r.coarse.Store(clk.Now().UnixNano())
	return r
}

// wantCoarse starts the coarse clock, once Run runs, for a windowed breaker.
func (r *Registry) wantCoarse() {
	r.coarseWanted.Store(true)
	if ctx := r.runCtx.Load(); ctx != nil {
		r.startCoarse(*ctx)
	}
}

func (r *Registry) startCoarse(ctx context.Context) {
	r.coarseOnce.Do(func() {
		go r.every(ctx, CoarseResolution, func() { r.coarse.Store(r.clock.Now().UnixNano()) })
	})
}

// OnTransition subscribes fn to every state change and reset of every live
// breaker. fn is called without locks held, on the goroutine that caused the
// transition (often a request's), so it must not block.
func (r *Registry) OnTransition(fn func(Key, Transition)) {
	subscribe(r, &r.onTransition, fn)
}

// OnCountsChanged subscribes fn to count changes without a transition,
// reported by Run at most once per interval and breaker.
func (r *Registry) OnCountsChanged(fn func(Key)) {
	subscribe(r, &r.onCountsChanged, fn)
}

func subscribe[F any](r *Registry, list *atomic.Pointer[[]F], fn F) {
	r.subscribeMu.Lock()
	defer r.subscribeMu.Unlock()
	var next []F
	if p := list.Load(); p != nil {
		next = slices.Clone(*p)
	}
	next = append(next, fn)
	list.Store(&next)
}

func (e *entry) transitioned(r *Registry, t Transition) {
	if e.retired.Load() {
		return
	}
	if subs := r.onTransition.Load(); subs != nil {
		for _, fn := range *subs {
			fn(e.key, t)
		}
	}
}

// Get returns the breaker for key.
func (r *Registry) Get(key Key) (*Breaker, bool) {
	e, ok := r.entries.Load(key)
	if !ok {
		return nil, false
	}
	return e.breaker, true
}

// Upsert creates the breaker for key, or applies settings to the existing
// one (keeping its state). uid is the identity of the resource the breaker
// belongs to: a resource deleted and created again under the same key has a
// new uid and gets a new breaker, never the old one's state. A newly created
// breaker starts from saved when given, e.g. the state recorded in a
// resource's status before a restart.
func (r *Registry) Upsert(key Key, uid string, settings Settings, saved *Snapshot) (b *Breaker, created bool) {
	var replaced *entry
	e, _ := r.entries.Update(key, func(e *entry, loaded bool) (*entry, bool) {
		if loaded && e.uid == uid {
			return e, true
		}
		if loaded {
			replaced = e
		}
		created = true
		e = &entry{key: key, uid: uid}
		e.breaker = New(settings, r.clock, Options{
			OnTransition: func(t Transition) { e.transitioned(r, t) },
			OnChange:     func() { e.countsChanged.Store(true) },
			CoarseNow:    r.coarse.Load,
		})
		if saved != nil {
			e.breaker.restore(*saved)
		}
		return e, true
	})
	if replaced != nil {
		replaced.retired.Store(true)
	}
	if settings.Windowed() {
		r.wantCoarse()
	}
	if !created {
		// Outside the table's lock: an update may fire a transition.
		e.breaker.Update(settings)
	}
	return e.breaker, created
}

// Delete removes the breaker for key; it tells its subscribers nothing more.
func (r *Registry) Delete(key Key) {
	r.entries.Update(key, func(e *entry, loaded bool) (*entry, bool) {
		if loaded {
			e.retired.Store(true)
		}
		return nil, false
	})
}

// Keys returns the keys of all breakers, sorted.
func (r *Registry) Keys() []Key {
	var keys []Key
	r.entries.Range(func(k Key, _ *entry) bool {
		keys = append(keys, k)
		return true
	})
	slices.Sort(keys)
	return keys
}

// Run reports coalesced count changes every interval until ctx ends.
func (r *Registry) Run(ctx context.Context, interval time.Duration) {
	r.runCtx.Store(&ctx)
	if r.coarseWanted.Load() {
		r.startCoarse(ctx)
	}
	r.every(ctx, interval, r.flushCountChanges)
}

// every runs fn every interval of the registry's clock until ctx ends.
func (r *Registry) every(ctx context.Context, interval time.Duration, fn func()) {
	ticker := r.clock.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
			fn()
		}
	}
}

func (r *Registry) flushCountChanges() {
	subs := r.onCountsChanged.Load()
	if subs == nil {
		return
	}
	r.entries.Range(func(k Key, e *entry) bool {
		if e.countsChanged.Swap(false) {
			for _, fn := range *subs {
				fn(k)
			}
		}
		return true
	})
}
