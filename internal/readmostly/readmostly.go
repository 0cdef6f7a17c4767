// Package readmostly is the map behind tables that every request reads and
// only configuration changes write (routes, live breakers). Reads take no
// lock; a write costs O(1), whatever the table's size, so that starting
// with 10,000 breakers is 10,000 cheap inserts, not 10,000 copies of a
// growing map.
package readmostly

import "sync"

// Map is a read-mostly map. The zero value is empty and ready to use.
type Map[K comparable, V any] struct {
	// writeMu serialises Update, so that its read-modify-write is atomic;
	// readers never take it.
	writeMu sync.Mutex
	m       sync.Map
}

// Load returns the value stored for key.
func (m *Map[K, V]) Load(key K) (V, bool) {
	v, ok := m.m.Load(key)
	if !ok {
		var zero V
		return zero, false
	}
	return v.(V), true
}

// Update runs fn with the value stored for key (if any) while holding the
// write lock; fn returns the value to store, or store=false to delete key.
// It returns what fn returned.
func (m *Map[K, V]) Update(key K, fn func(old V, loaded bool) (v V, store bool)) (V, bool) {
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	old, loaded := m.Load(key)
	v, store := fn(old, loaded)
	switch {
	case store:
		m.m.Store(key, v)
	case loaded:
		m.m.Delete(key)
	}
	return v, store
}

// Range calls fn for each entry until fn returns false. It sees each entry
// present for the whole call once, and may or may not see entries written
// during it.
func (m *Map[K, V]) Range(fn func(K, V) bool) {
	m.m.Range(func(k, v any) bool { return fn(k.(K), v.(V)) })
}
