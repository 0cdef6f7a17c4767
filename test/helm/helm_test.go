//go:build helm

// Package helm tests the chart dist/chart with the pinned helm binary
// (make test-helm): helm lint; the default render against dist/install.yaml,
// object by object; the optional parts against their config/ overlays;
// values against the flags and objects they set; and the render applied
// server-side to the project's local API server.
//
// What the chart may render differently from dist/install.yaml, and nothing
// else (normalise checks each, then removes it):
//   - every object's labels gain helm.sh/chart: circuit-breaker-operator-<chart
//     version> and app.kubernetes.io/instance: <release>, and
//     app.kubernetes.io/managed-by is Helm (the installer's is kustomize, or
//     absent); selectors and the pod template's labels are the installer's;
//   - the CRD has helm.sh/resource-policy: keep (crd.keep, on by default), so
//     helm uninstall leaves the CircuitBreakers in place.
package helm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/circuitbreaker-io/operator/internal/controlplane"
)

const (
	// The release name that gives the installer's object names.
	release   = "circuit-breaker-operator"
	namespace = "circuit-breaker-operator-system"
	crdName   = "circuitbreakers.circuitbreaker.io"
)

var (
	root  = controlplane.RepoRoot()
	chart = filepath.Join(root, "dist", "chart")
)

type object = map[string]any

func TestLint(t *testing.T) {
	g := NewWithT(t)
	out, err := run(tool(t, "HELM"), "lint", "--strict", chart)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("0 chart(s) failed"))
}

func TestDefaultRenderIsTheInstaller(t *testing.T) {
	g := NewWithT(t)
	rendered := normalise(g, render(t, g, release))
	installer := normalise(g, readObjects(g, filepath.Join(root, "dist", "install.yaml")))
	expectSameObjects(g, rendered, installer)
}

// The optional parts, switched on, are the overlays' objects.
func TestOptionalPartsAreTheOverlays(t *testing.T) {
	g := NewWithT(t)
	defaults := byKey(render(t, g, release))
	rendered := byKey(render(t, g, release, "--set", "prometheus.enabled=true", "--set", "networkPolicy.enabled=true"))
	var added []object
	for key, o := range rendered {
		if _, found := defaults[key]; !found {
			added = append(added, o)
		}
	}
	want := readObjects(g, filepath.Join(root, "dist", "network-policy.yaml"))
	monitoring := kustomize(t, g, "config/prometheus")
	for _, o := range monitoring {
		if o["kind"] == "ServiceMonitor" {
			want = append(want, o)
		}
	}
	expectSameObjects(g, normalise(g, added), normalise(g, want))
}

// prometheusRule.enabled renders config/prometheus/rules.yaml with the
// additional labels, or, for a chart generated without the rules, fails
// the render rather than install nothing.
func TestPrometheusRule(t *testing.T) {
	g := NewWithT(t)
	rulesFile := filepath.Join(root, "config", "prometheus", "rules.yaml")
	args := []string{"--set", "prometheusRule.enabled=true", "--set", "prometheusRule.additionalLabels.release=prometheus"}
	if _, err := os.Stat(rulesFile); os.IsNotExist(err) {
		out, err := run(tool(t, "HELM"), append([]string{"template", release, chart, "-n", namespace}, args...)...)
		g.Expect(err).To(HaveOccurred())
		g.Expect(out).To(ContainSubstring("generated without config/prometheus/rules.yaml"))
		return
	}
	rules := kindOf(render(t, g, release, args...), "PrometheusRule")
	g.Expect(rules).To(HaveLen(1))
	labels := get(rules[0], "metadata", "labels").(map[string]any)
	g.Expect(labels).To(HaveKeyWithValue("release", "prometheus"))
	delete(labels, "release")
	want := readObjects(g, rulesFile)
	for _, o := range kustomize(t, g, "config/prometheus") {
		if o["kind"] == "PrometheusRule" {
			want = []object{o}
		}
	}
	expectSameObjects(g, normalise(g, rules), normalise(g, want))
}

// Values change what they say and nothing the test can see otherwise breaks.
func TestValues(t *testing.T) {
	g := NewWithT(t)
	objects := render(t, g, release,
		"--set", "manager.replicas=3",
		"--set", "manager.image.repository=registry.example.com/cbo",
		"--set", "manager.image.tag=v9",
		"--set", "manager.allowURLUpstreams=true",
		"--set", "manager.notifyWebhook=https://hooks.example.com/cb",
		"--set", "manager.upstreamDenyCIDRs=10.0.0.0/8\\,192.168.0.0/16",
		"--set", "manager.proxy.port=9090",
		"--set", "manager.maxConnections=20000",
		"--set", "manager.extraArgs={--zap-log-level=debug}",
		"--set", "metrics.enabled=false",
		"--set", "crd.keep=false",
		"--set", "namespace.create=false",
	)
	deployment := kindOf(objects, "Deployment")[0]
	g.Expect(get(deployment, "spec", "replicas")).To(BeEquivalentTo(3))
	container := get(deployment, "spec", "template", "spec", "containers").([]any)[0].(map[string]any)
	g.Expect(container["image"]).To(Equal("registry.example.com/cbo:v9"))
	g.Expect(container["args"]).To(ConsistOf(
		"--leader-elect",
		"--proxy-bind-address=:9090",
		"--health-probe-bind-address=:8081",
		"--metrics-bind-address=0",
		"--allow-url-upstreams",
		"--notify-webhook=https://hooks.example.com/cb",
		"--upstream-deny-cidrs=10.0.0.0/8,192.168.0.0/16",
		"--max-connections=20000",
		"--zap-log-level=debug",
	))
	g.Expect(container["ports"]).To(ConsistOf(
		HaveKeyWithValue("containerPort", BeEquivalentTo(9090)),
		HaveKeyWithValue("containerPort", BeEquivalentTo(8081)),
	))
	g.Expect(kindOf(objects, "Namespace")).To(BeEmpty())
	for _, service := range kindOf(objects, "Service") {
		g.Expect(get(service, "metadata", "name")).NotTo(HaveSuffix("-metrics"))
	}
	crd := kindOf(objects, "CustomResourceDefinition")[0]
	g.Expect(get(crd, "metadata", "annotations")).NotTo(HaveKey("helm.sh/resource-policy"))

	g.Expect(kindOf(render(t, g, release, "--set", "crd.enabled=false"), "CustomResourceDefinition")).To(BeEmpty())
	g.Expect(kindOf(render(t, g, release, "--set", "metrics.enabled=false", "--set", "prometheus.enabled=true"), "ServiceMonitor")).
		To(BeEmpty(), "a ServiceMonitor without a metrics Service scrapes nothing")
}

// Another release name prefixes every name, the optional objects' too, and
// every reference follows.
func TestReleaseNamePrefixesNames(t *testing.T) {
	g := NewWithT(t)
	const prefix = "cb-circuit-breaker-operator-"
	objects := render(t, g, "cb", "--set", "prometheus.enabled=true", "--set", "networkPolicy.enabled=true")
	for _, o := range objects {
		name := get(o, "metadata", "name").(string)
		switch o["kind"] {
		case "Namespace", "CustomResourceDefinition":
		case "ClusterRole":
			if strings.HasPrefix(name, "circuitbreaker-") { // the tenants' roles keep the contract's names
				continue
			}
			g.Expect(name).To(HavePrefix(prefix))
		default:
			g.Expect(name).To(HavePrefix(prefix), "%s %s", o["kind"], name)
		}
	}
	for _, binding := range append(kindOf(objects, "RoleBinding"), kindOf(objects, "ClusterRoleBinding")...) {
		g.Expect(get(binding, "roleRef", "name")).To(HavePrefix(prefix))
		subject := binding["subjects"].([]any)[0].(map[string]any)
		g.Expect(subject).To(HaveKeyWithValue("name", prefix+"controller-manager"))
		g.Expect(subject).To(HaveKeyWithValue("namespace", namespace))
	}
	deployment := kindOf(objects, "Deployment")[0]
	g.Expect(get(deployment, "spec", "template", "spec", "serviceAccountName")).To(Equal(prefix + "controller-manager"))
	// Exposed breakers' Services point at this release's proxy Service.
	container := get(deployment, "spec", "template", "spec", "containers").([]any)[0].(map[string]any)
	g.Expect(container["args"]).To(ContainElement("--proxy-service=" + namespace + "/" + prefix + "proxy"))
}

// The default render, with the NetworkPolicy, is what the API server accepts
// and stores, applied twice (an upgrade that changes nothing).
func TestServerSideApply(t *testing.T) {
	g := NewWithT(t)
	manifest, err := run(tool(t, "HELM"), "template", release, chart, "-n", namespace, "--set", "networkPolicy.enabled=true")
	g.Expect(err).NotTo(HaveOccurred(), manifest)
	file := filepath.Join(t.TempDir(), "chart.yaml")
	g.Expect(os.WriteFile(file, []byte(manifest), 0o600)).To(Succeed())

	kubectl := command(g, "kubectl", startAPIServer(t, g))

	for range 2 {
		out := kubectl("apply", "--server-side", "--field-manager", "helm-chart-test", "-f", file)
		g.Expect(strings.Count(out, "serverside-applied")).To(Equal(strings.Count(manifest, "\nkind: ")), out)
	}
	kubectl("wait", "--for", "condition=Established", "--timeout", "30s", "crd/"+crdName)
	g.Expect(kubectl("get", "deployment", "-n", namespace, release+"-controller-manager", "-o", "jsonpath={.spec.replicas}")).To(Equal("2"))
	g.Expect(kubectl("get", "namespace", namespace, "-o", "jsonpath={.metadata.labels.app\\.kubernetes\\.io/managed-by}")).To(Equal("Helm"))
	g.Expect(kubectl("get", "crd", crdName, "-o", "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}")).To(Equal("keep"))
	g.Expect(kubectl("get", "networkpolicy", "-n", namespace, "-o", "name")).To(ContainSubstring("allow-callers"))
}

// The README's commands: helm install creates the namespace (the chart's,
// labelled for the restricted Pod Security Standard), helm upgrade changes
// what the values say, helm uninstall keeps the CRD (crd.keep).
func TestInstallUpgradeUninstall(t *testing.T) {
	g := NewWithT(t)
	kubeconfig := startAPIServer(t, g)
	kubectl, helm := command(g, "kubectl", kubeconfig), command(g, tool(t, "HELM"), kubeconfig)

	helm("install", release, chart, "--namespace", namespace, "--create-namespace")
	g.Expect(kubectl("get", "namespace", namespace, "-o", "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}")).To(Equal("restricted"))
	g.Expect(kubectl("get", "deployment", "-n", namespace, release+"-controller-manager", "-o", "jsonpath={.spec.replicas}")).To(Equal("2"))

	helm("upgrade", release, chart, "--namespace", namespace, "--set", "manager.replicas=3", "--set", "manager.allowURLUpstreams=true")
	deployment := release + "-controller-manager"
	g.Expect(kubectl("get", "deployment", "-n", namespace, deployment, "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].args}")).
		To(And(HavePrefix("3 "), ContainSubstring(`"--allow-url-upstreams"`)))

	g.Expect(helm("uninstall", release, "--namespace", namespace)).To(ContainSubstring("kept due to the resource policy"))
	g.Expect(kubectl("get", "crd", crdName, "-o", "name")).To(ContainSubstring(crdName))
	out, err := run("kubectl", "--kubeconfig", kubeconfig, "get", "clusterrole", release+"-manager-role")
	g.Expect(err).To(HaveOccurred(), "the manager's ClusterRole outlived the release: %s", out)
}

// startAPIServer starts the project's local kube-apiserver and etcd and
// returns a kubeconfig for a cluster administrator of it.
func startAPIServer(t *testing.T, g Gomega) string {
	assets, err := controlplane.Assets()
	g.Expect(err).NotTo(HaveOccurred())
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	_, err = env.Start()
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })
	kubeconfig := filepath.Join(t.TempDir(), "admin.kubeconfig")
	g.Expect(controlplane.WriteAdminKubeconfig(env, kubeconfig)).To(Succeed())
	return kubeconfig
}

// command runs a kubectl-like tool on the cluster of kubeconfig and returns
// its stdout; it fails the test when the tool fails.
func command(g Gomega, tool, kubeconfig string) func(args ...string) string {
	return func(args ...string) string {
		out, err := run(tool, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		g.Expect(err).NotTo(HaveOccurred(), "%s %s: %s", filepath.Base(tool), strings.Join(args, " "), out)
		return out
	}
}

// normalise checks and removes what the chart adds (the package comment
// lists it) and the installer's managed-by label, then drops empty maps.
func normalise(g Gomega, objects []object) []object {
	for _, o := range objects {
		meta := o["metadata"].(map[string]any)
		labels, _ := meta["labels"].(map[string]any)
		switch labels["app.kubernetes.io/managed-by"] {
		case "Helm":
			g.Expect(labels).To(HaveKeyWithValue("helm.sh/chart", MatchRegexp(`^circuit-breaker-operator-\d+\.\d+\.\d+`)), "%s", meta["name"])
			g.Expect(labels).To(HaveKeyWithValue("app.kubernetes.io/instance", release), "%s", meta["name"])
			delete(labels, "helm.sh/chart")
			delete(labels, "app.kubernetes.io/instance")
			delete(labels, "app.kubernetes.io/managed-by")
			if o["kind"] == "CustomResourceDefinition" {
				annotations, _ := meta["annotations"].(map[string]any)
				g.Expect(annotations).To(HaveKeyWithValue("helm.sh/resource-policy", "keep"))
				delete(annotations, "helm.sh/resource-policy")
			}
		case "kustomize":
			delete(labels, "app.kubernetes.io/managed-by")
		}
		for _, key := range []string{"labels", "annotations"} {
			if m, ok := meta[key].(map[string]any); ok && len(m) == 0 {
				delete(meta, key)
			}
		}
	}
	return objects
}

// expectSameObjects compares the two sets by kind, namespace and name, then
// each pair as YAML, so a failure shows the differing lines.
func expectSameObjects(g Gomega, got, want []object) {
	gotByKey, wantByKey := byKey(got), byKey(want)
	g.Expect(got).To(HaveLen(len(gotByKey)), "two rendered objects share a kind, namespace and name")
	g.Expect(want).To(HaveLen(len(wantByKey)), "two expected objects share a kind, namespace and name")
	g.Expect(keys(gotByKey)).To(ConsistOf(keys(wantByKey)))
	for key, o := range wantByKey {
		wantText, err := yaml.Marshal(o)
		g.Expect(err).NotTo(HaveOccurred())
		gotText, err := yaml.Marshal(gotByKey[key])
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(gotText)).To(Equal(string(wantText)), key)
	}
}

func render(t *testing.T, g Gomega, releaseName string, args ...string) []object {
	out, err := run(tool(t, "HELM"), append([]string{"template", releaseName, chart, "-n", namespace}, args...)...)
	g.Expect(err).NotTo(HaveOccurred(), out)
	return parseObjects(g, out)
}

func kustomize(t *testing.T, g Gomega, dir string) []object {
	out, err := run(tool(t, "KUSTOMIZE"), "build", filepath.Join(root, dir))
	g.Expect(err).NotTo(HaveOccurred(), out)
	return parseObjects(g, out)
}

// tool is the binary the Makefile passes in the environment variable name.
func tool(t *testing.T, name string) string {
	path := os.Getenv(name)
	if path == "" {
		t.Fatalf("%s is not set: run these tests with make test-helm", name)
	}
	return path
}

// run returns the command's stdout, with its stderr on failure.
func run(name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

func readObjects(g Gomega, path string) []object {
	text, err := os.ReadFile(path)
	g.Expect(err).NotTo(HaveOccurred())
	return parseObjects(g, string(text))
}

func parseObjects(g Gomega, text string) []object {
	var objects []object
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(text, -1) {
		var o object
		g.Expect(yaml.Unmarshal([]byte(doc), &o)).To(Succeed(), doc)
		if len(o) > 0 {
			objects = append(objects, o)
		}
	}
	return objects
}

func byKey(objects []object) map[string]object {
	m := map[string]object{}
	for _, o := range objects {
		ns, _ := get(o, "metadata", "namespace").(string)
		m[o["kind"].(string)+" "+ns+"/"+get(o, "metadata", "name").(string)] = o
	}
	return m
}

func keys(m map[string]object) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func kindOf(objects []object, kind string) []object {
	var matching []object
	for _, o := range objects {
		if o["kind"] == kind {
			matching = append(matching, o)
		}
	}
	return matching
}

func get(o any, path ...string) any {
	for _, key := range path {
		m, ok := o.(map[string]any)
		if !ok {
			return nil
		}
		o = m[key]
	}
	return o
}
