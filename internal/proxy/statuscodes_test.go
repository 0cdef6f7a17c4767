package proxy

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func TestParseStatusCodes(t *testing.T) {
	tests := []struct {
		patterns []string
		in, out  []int
		err      string
	}{
		{patterns: []string{"5xx"}, in: []int{500, 503, 599}, out: []int{200, 404, 499, 600, -1}},
		{patterns: []string{"429", "500-504"}, in: []int{429, 500, 502, 504}, out: []int{428, 430, 505, 599}},
		{patterns: []string{"4xx", "5xx"}, in: []int{400, 451, 599}, out: []int{200, 399}},
		{patterns: []string{"1xx"}, in: []int{100, 199}, out: []int{200}},
		{patterns: nil, out: []int{500, 200}},
		{patterns: []string{"abc"}, err: `failure status code "abc": want a status code from 100 to 599`},
		{patterns: []string{"6xx"}, err: `failure status code "6xx"`},
		{patterns: []string{"504-500"}, err: `failure status code range "504-500" runs backwards`},
		{patterns: []string{"500-"}, err: `failure status code "500-"`},
		{patterns: []string{"99"}, err: `failure status code "99"`},
		{patterns: []string{"0500"}, err: `failure status code "0500"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.patterns, ","), func(t *testing.T) {
			g := NewWithT(t)
			set, err := ParseStatusCodes(tt.patterns)
			if tt.err != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tt.err)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			for _, c := range tt.in {
				g.Expect(set.Contains(c)).To(BeTrue(), "contains %d", c)
			}
			for _, c := range tt.out {
				g.Expect(set.Contains(c)).To(BeFalse(), "does not contain %d", c)
			}
		})
	}
}
