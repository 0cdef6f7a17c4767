package cbctl_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/yaml"

	"github.com/circuitbreaker-io/operator/internal/controlplane"
)

// krewPlugin is krew's Plugin manifest (v1alpha2), as far as this one uses it:
// decoded strictly, a misspelt field fails the test.
type krewPlugin struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version          string `json:"version"`
		Homepage         string `json:"homepage"`
		ShortDescription string `json:"shortDescription"`
		Description      string `json:"description"`
		Platforms        []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			SHA256 string `json:"sha256"`
			Bin    string `json:"bin"`
			Files  []struct {
				From string `json:"from"`
				To   string `json:"to"`
			} `json:"files"`
		} `json:"platforms"`
	} `json:"spec"`
}

// The template renders, with the placeholders its comment names, into a
// manifest whose every platform installs kubectl-cb from its own archive.
func TestKrewManifestTemplate(t *testing.T) {
	g := NewWithT(t)
	template, err := os.ReadFile(filepath.Join(controlplane.RepoRoot(), "dist", "krew", "cb.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	var unknown []string
	rendered := os.Expand(string(template), func(name string) string {
		switch {
		case name == "VERSION":
			return "v9.8.7"
		case strings.HasPrefix(name, "SHA256_"):
			return strings.Repeat("a", 64)
		}
		unknown = append(unknown, name)
		return ""
	})
	g.Expect(unknown).To(BeEmpty(), "placeholders a release would not fill")
	var plugin krewPlugin
	g.Expect(yaml.UnmarshalStrict([]byte(rendered), &plugin, yaml.DisallowUnknownFields)).To(Succeed())
	g.Expect(plugin.APIVersion).To(Equal("krew.googlecontainertools.github.com/v1alpha2"))
	g.Expect(plugin.Kind).To(Equal("Plugin"))
	g.Expect(plugin.Metadata.Name).To(Equal("cb"), "krew installs it as kubectl-cb")
	g.Expect(plugin.Spec.Version).To(Equal("v9.8.7"))
	g.Expect(plugin.Spec.Platforms).To(HaveLen(5))
	for _, p := range plugin.Spec.Platforms {
		osName, arch := p.Selector.MatchLabels["os"], p.Selector.MatchLabels["arch"]
		g.Expect(p.URI).To(HaveSuffix("/v9.8.7/kubectl-cb_v9.8.7_"+osName+"_"+arch+map[bool]string{true: ".zip", false: ".tar.gz"}[osName == "windows"]),
			"%s/%s downloads its own archive", osName, arch)
		g.Expect(p.SHA256).To(HaveLen(64))
		bin := "kubectl-cb"
		if osName == "windows" {
			bin += ".exe"
		}
		g.Expect(p.Bin).To(Equal(bin))
		var files []string
		for _, f := range p.Files {
			files = append(files, f.From)
		}
		g.Expect(files).To(ConsistOf(bin, "LICENSE"))
	}
}
