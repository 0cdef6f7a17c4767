// Package cowmap is a copy-on-write map for tables that every request reads
// and only configuration changes write: reads are one atomic load and a map
// lookup, with no lock and no contention between readers.
package cowmap

import (
	"sync"
	"sync/atomic"
)

// Map is a copy-on-write map. The zero value is empty and ready to use.
type Map[K comparable, V any] struct {
	writeMu sync.Mutex
	current atomic.Pointer[map[K]V]
}

// Load returns the value stored for key.
func (m *Map[K, V]) Load(key K) (V, bool) {
	p := m.current.Load()
	if p == nil {
		var zero V
		return zero, false
	}
	v, ok := (*p)[key]
	return v, ok
}

// Snapshot returns the current contents. It must not be modified.
func (m *Map[K, V]) Snapshot() map[K]V {
	if p := m.current.Load(); p != nil {
		return *p
	}
	return nil
}

// Update runs fn with the value stored for key (if any) while holding the
// write lock; fn returns the value to store, or store=false to delete key.
// It returns what fn returned.
func (m *Map[K, V]) Update(key K, fn func(old V, loaded bool) (v V, store bool)) (V, bool) {
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	old := m.Snapshot()
	prev, loaded := old[key]
	v, store := fn(prev, loaded)
	if !store && !loaded {
		return v, store
	}
	next := make(map[K]V, len(old)+1)
	for k, e := range old {
		next[k] = e
	}
	if store {
		next[key] = v
	} else {
		delete(next, key)
	}
	m.current.Store(&next)
	return v, store
}
