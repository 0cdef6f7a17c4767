package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	. "github.com/onsi/gomega"
)

// Every flag cmd/manager registers has a value in the chart, or a reason
// in flagsLeftOut: a new flag cannot be forgotten by values.yaml.
func TestEveryManagerFlagHasAValue(t *testing.T) {
	g := NewWithT(t)
	source, err := os.ReadFile(filepath.Join("..", "..", "cmd", "manager", "main.go"))
	g.Expect(err).NotTo(HaveOccurred())
	registered := regexp.MustCompile(`flag\.\w+Var\(&\w+,\s*"([a-z0-9-]+)"`).FindAllStringSubmatch(string(source), -1)
	g.Expect(registered).NotTo(BeEmpty(), "no flag registrations found in cmd/manager/main.go")

	inChart, inManager := map[string]bool{}, map[string]bool{}
	for _, f := range managerFlags {
		inChart[f.name] = true
	}
	for _, m := range registered {
		name := m[1]
		inManager[name] = true
		g.Expect(inChart[name] || flagsLeftOut[name] != "").To(BeTrue(),
			"cmd/manager registers --%s: add it to managerFlags (hack/helmchart/flags.go) or flagsLeftOut", name)
	}
	// And the chart passes no flag the manager would refuse.
	for name := range inChart {
		g.Expect(inManager[name]).To(BeTrue(), "managerFlags has --%s, which cmd/manager does not register", name)
	}
}
