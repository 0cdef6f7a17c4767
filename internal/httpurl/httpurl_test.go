package httpurl

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		raw string
		ok  bool
	}{
		{"http://order-api:8080", true},
		{"https://order-api.shop.svc/base", true},
		{"HTTP://order-api", true},
		{"order-api:8080", false},
		{"/relative/path", false},
		{"ftp://order-api", false},
		{"http://", false},
		{"http:///path", false},
		{"http://[::1", false},
		{"", false},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			g := NewWithT(t)
			u, err := Parse(tc.raw)
			if tc.ok {
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(u.Host).NotTo(BeEmpty())
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring("is not an absolute http or https URL")))
			g.Expect(u).To(BeNil())
		})
	}
}
