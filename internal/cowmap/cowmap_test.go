package cowmap

import (
	"sync"
	"testing"

	. "github.com/onsi/gomega"
)

func TestMap(t *testing.T) {
	g := NewWithT(t)
	var m Map[string, int]
	_, ok := m.Load("a")
	g.Expect(ok).To(BeFalse())
	g.Expect(m.Snapshot()).To(BeEmpty())

	m.Update("a", func(int, bool) (int, bool) { return 1, true })
	m.Update("b", func(int, bool) (int, bool) { return 2, true })
	before := m.Snapshot()
	v, store := m.Update("a", func(old int, loaded bool) (int, bool) {
		g.Expect(loaded).To(BeTrue())
		return old + 10, true
	})
	g.Expect(v).To(Equal(11))
	g.Expect(store).To(BeTrue())
	g.Expect(before).To(Equal(map[string]int{"a": 1, "b": 2}), "a snapshot never changes")

	m.Update("b", func(int, bool) (int, bool) { return 0, false })
	m.Update("missing", func(_ int, loaded bool) (int, bool) {
		g.Expect(loaded).To(BeFalse())
		return 0, false
	})
	g.Expect(m.Snapshot()).To(Equal(map[string]int{"a": 11}))
}

func TestConcurrentReadersAndWriters(t *testing.T) {
	g := NewWithT(t)
	var m Map[int, int]
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				m.Update(w*1000+i, func(int, bool) (int, bool) { return i, true })
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
	g.Expect(m.Snapshot()).To(HaveLen(800))
}
