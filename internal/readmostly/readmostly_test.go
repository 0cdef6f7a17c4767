package readmostly

import (
	"sync"
	"testing"

	. "github.com/onsi/gomega"
)

func contents[K comparable, V any](m *Map[K, V]) map[K]V {
	out := map[K]V{}
	m.Range(func(k K, v V) bool { out[k] = v; return true })
	return out
}

func TestMap(t *testing.T) {
	g := NewWithT(t)
	var m Map[string, int]
	_, ok := m.Load("a")
	g.Expect(ok).To(BeFalse())
	g.Expect(contents(&m)).To(BeEmpty())

	m.Update("a", func(int, bool) (int, bool) { return 1, true })
	m.Update("b", func(int, bool) (int, bool) { return 2, true })
	v, store := m.Update("a", func(old int, loaded bool) (int, bool) {
		g.Expect(loaded).To(BeTrue())
		return old + 10, true
	})
	g.Expect(v).To(Equal(11))
	g.Expect(store).To(BeTrue())
	g.Expect(contents(&m)).To(Equal(map[string]int{"a": 11, "b": 2}))

	m.Update("b", func(int, bool) (int, bool) { return 0, false })
	m.Update("missing", func(_ int, loaded bool) (int, bool) {
		g.Expect(loaded).To(BeFalse())
		return 0, false
	})
	g.Expect(contents(&m)).To(Equal(map[string]int{"a": 11}))

	stopped := 0
	m.Update("c", func(int, bool) (int, bool) { return 3, true })
	m.Range(func(string, int) bool { stopped++; return false })
	g.Expect(stopped).To(Equal(1), "Range stops when told")
}

// Updates are read-modify-write under one lock: concurrent increments of
// one key lose nothing, while readers read without it.
func TestConcurrentReadersAndWriters(t *testing.T) {
	g := NewWithT(t)
	var m Map[int, int]
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				m.Update(w*1000+i, func(int, bool) (int, bool) { return i, true })
				m.Update(-1, func(old int, _ bool) (int, bool) { return old + 1, true })
			}
		})
		wg.Go(func() {
			for i := range 2000 {
				if v, ok := m.Load(w*1000 + i%200); ok {
					g.Expect(v).To(Equal(i % 200))
				}
			}
		})
	}
	wg.Wait()
	g.Expect(contents(&m)).To(HaveLen(801))
	total, _ := m.Load(-1)
	g.Expect(total).To(Equal(800))
}
