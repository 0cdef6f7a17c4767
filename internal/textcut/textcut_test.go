package textcut

import (
	"testing"
	"unicode/utf8"

	. "github.com/onsi/gomega"
)

func TestCut(t *testing.T) {
	for _, tc := range []struct {
		name, s string
		n       int
		want    string
	}{
		{"shorter than the bound", "abc", 5, "abc"},
		{"as long as the bound", "abcde", 5, "abcde"},
		{"longer: cut and marked", "abcdefgh", 6, "abc…"},
		{"never inside a rune", "aéééé", 7, "aé…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got := Cut(tc.s, tc.n)
			g.Expect(got).To(Equal(tc.want))
			g.Expect(len(got)).To(BeNumerically("<=", tc.n))
			g.Expect(utf8.ValidString(got)).To(BeTrue())
		})
	}
}
