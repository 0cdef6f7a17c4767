package monitoring

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/yaml"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controlplane"
	"github.com/circuitbreaker-io/operator/internal/metrics"
	"github.com/circuitbreaker-io/operator/internal/notify"
)

// The alerts the contract names.
var contractAlerts = []string{"CircuitBreakerOpen", "CircuitBreakerFlapping", "CircuitBreakerNotificationsDropped", "CircuitBreakerOperatorAbsent"}

const runbookBase = "https://github.com/circuitbreaker-io/operator/blob/main/README.md#"

// exportedSeries is every series name the manager exports, with each
// label's values as the code writes them (a rule on state="open" would
// never fire: the code writes "Open"). The series are made by the code
// itself, so a renamed metric or label value fails here.
func exportedSeries(t *testing.T) map[string]map[string][]string {
	g := NewWithT(t)
	reg := prometheus.NewRegistry()
	m := metrics.NewBreakers(reg)
	_, err := notify.NewWebhook("http://127.0.0.1:1/", notify.Options{Registerer: reg})
	g.Expect(err).NotTo(HaveOccurred())
	key := breaker.NewKey("shop", "order-api")
	route := m.Route(key)
	route.Success.Inc()
	route.Failure.Inc()
	route.Rejected.Inc()
	route.Duration.Observe(0.1)
	for _, tr := range []breaker.Transition{
		{From: breaker.StateClosed, To: breaker.StateOpen}, {From: breaker.StateOpen, To: breaker.StateHalfOpen},
		{From: breaker.StateHalfOpen, To: breaker.StateClosed},
	} {
		m.RecordTransition(key, tr)
	}
	m.RecordRates(key, breaker.Snapshot{Settings: breaker.Settings{FailureRateThreshold: 50, SlowCallRateThreshold: 50}})
	m.CollectEndpoints(func(yield func(breaker.Key, int, int) bool) { yield(key, 3, 1) })
	m.EndpointEjected(key)
	families, err := reg.Gather()
	g.Expect(err).NotTo(HaveOccurred())

	series := map[string]map[string][]string{}
	add := func(name string, labels []*dto.LabelPair) {
		if series[name] == nil {
			series[name] = map[string][]string{}
		}
		for _, l := range labels {
			if !slices.Contains(series[name][l.GetName()], l.GetValue()) {
				series[name][l.GetName()] = append(series[name][l.GetName()], l.GetValue())
			}
		}
	}
	for _, f := range families {
		for _, metric := range f.GetMetric() {
			if f.GetType() == dto.MetricType_HISTOGRAM {
				add(f.GetName()+"_bucket", append(metric.GetLabel(), &dto.LabelPair{Name: new("le"), Value: new("+Inf")}))
				add(f.GetName()+"_sum", metric.GetLabel())
				add(f.GetName()+"_count", metric.GetLabel())
				continue
			}
			add(f.GetName(), metric.GetLabel())
		}
	}
	g.Expect(series).To(HaveKey("circuitbreaker_failure_rate"), "every series was made")
	// Prometheus's own series of each target.
	series["up"] = map[string][]string{}
	return series
}

// checkSelectors checks that expr queries only exported series, by labels
// they have (or a scrape adds), with values the code writes.
func checkSelectors(g Gomega, series map[string]map[string][]string, where, expr string) {
	selectors := Selectors(expr)
	g.Expect(selectors).NotTo(BeEmpty(), "%s queries a series: %s", where, expr)
	for _, s := range selectors {
		labels, ok := series[s.Metric]
		g.Expect(ok).To(BeTrue(), "%s: %s is not a series the manager exports", where, s.Metric)
		for _, m := range s.Matchers {
			if m.Label == "job" || m.Label == "instance" { // the scrape's
				continue
			}
			values, ok := labels[m.Label]
			g.Expect(ok).To(BeTrue(), "%s: %s has no label %s", where, s.Metric, m.Label)
			if m.Label == "namespace" || m.Label == "name" {
				continue // the breakers', any
			}
			for _, v := range m.Values() {
				g.Expect(values).To(ContainElement(v), "%s: %s{%s} is never %q", where, s.Metric, m.Label, v)
			}
		}
	}
}

// promtool is the path of promtool (Debian's prometheus package), or skips.
func promtool(t *testing.T) string {
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found: apt-get install prometheus (make test-monitoring requires it)")
	}
	return path
}

func runPromtool(t *testing.T, dir string, args ...string) {
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	NewWithT(t).Expect(err).NotTo(HaveOccurred(), "promtool %s\n%s", strings.Join(args, " "), out)
	t.Logf("promtool %s\n%s", strings.Join(args, " "), out)
}

// readmeAnchors are the anchors GitHub gives the README's headings.
func readmeAnchors(t *testing.T) []string {
	data, err := os.ReadFile(filepath.Join(controlplane.RepoRoot(), "README.md"))
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	var anchors []string
	punctuation := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	scanner := bufio.NewScanner(bytes.NewReader(data))
	fenced := false
	for scanner.Scan() {
		if strings.HasPrefix(scanner.Text(), "```") {
			fenced = !fenced // a shell comment in a code block is no heading
		}
		if heading, ok := strings.CutPrefix(scanner.Text(), "#"); ok && !fenced {
			heading = strings.TrimSpace(strings.TrimLeft(heading, "#"))
			anchors = append(anchors, strings.ReplaceAll(punctuation.ReplaceAllString(strings.ToLower(heading), ""), " ", "-"))
		}
	}
	return anchors
}

func TestAlertRules(t *testing.T) {
	g := NewWithT(t)
	rule, err := LoadRules(RulesPath)
	g.Expect(err).NotTo(HaveOccurred())
	series := exportedSeries(t)
	anchors := readmeAnchors(t)
	var alerts []string
	for _, group := range rule.Spec.Groups {
		for _, r := range group.Rules {
			alerts = append(alerts, r.Alert)
			g.Expect(r.Labels).To(HaveKeyWithValue("severity", BeElementOf("warning", "critical")), r.Alert)
			g.Expect(r.Annotations).To(SatisfyAll(
				HaveKeyWithValue("summary", Not(BeEmpty())), HaveKeyWithValue("description", Not(BeEmpty())),
				HaveKeyWithValue("runbook_url", HavePrefix(runbookBase))), r.Alert)
			anchor := strings.TrimPrefix(r.Annotations["runbook_url"], runbookBase)
			g.Expect(anchors).To(ContainElement(anchor), "%s: the runbook_url's anchor is a README heading", r.Alert)
			checkSelectors(g, series, r.Alert, r.Expr)
		}
	}
	g.Expect(alerts).To(ConsistOf(contractAlerts))
}

// The operator-absent alert's job is what the ServiceMonitor makes it: the
// name of the Service whose port it scrapes; and the ServiceMonitor honours
// the breakers' namespace label, which the breaker alerts group by.
func TestAlertRulesMatchTheServiceMonitor(t *testing.T) {
	g := NewWithT(t)
	data, err := os.ReadFile(filepath.Join(controlplane.RepoRoot(), "config", "prometheus", "monitor.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	var monitor struct {
		Spec struct {
			Endpoints []struct {
				Port        string `json:"port"`
				HonorLabels bool   `json:"honorLabels"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	g.Expect(yaml.Unmarshal(data, &monitor)).To(Succeed())
	g.Expect(monitor.Spec.Endpoints).To(HaveLen(1))
	g.Expect(monitor.Spec.Endpoints[0].HonorLabels).To(BeTrue())

	install, err := os.ReadFile(filepath.Join(controlplane.RepoRoot(), "dist", "install.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	var services []string
	for doc := range strings.SplitSeq(string(install), "\n---\n") {
		var object struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Spec struct {
				Ports []struct {
					Name string `json:"name"`
				} `json:"ports"`
			} `json:"spec"`
		}
		g.Expect(yaml.Unmarshal([]byte(doc), &object)).To(Succeed())
		if object.Kind == "Service" && slices.ContainsFunc(object.Spec.Ports, func(p struct {
			Name string `json:"name"`
		}) bool {
			return p.Name == monitor.Spec.Endpoints[0].Port
		}) {
			services = append(services, object.Metadata.Name)
		}
	}
	g.Expect(services).To(HaveLen(1), "one Service has the port the ServiceMonitor scrapes")

	rule, err := LoadRules(RulesPath)
	g.Expect(err).NotTo(HaveOccurred())
	for _, r := range rule.Spec.Groups[0].Rules {
		if r.Alert == "CircuitBreakerOperatorAbsent" {
			g.Expect(r.Expr).To(ContainSubstring(`up{job="` + services[0] + `"}`))
		}
	}
}

// promtool's unit tests (rules_test.yaml) on the PrometheusRule's spec.
func TestPromtoolRules(t *testing.T) {
	g := NewWithT(t)
	promtool(t)
	rule, err := LoadRules(RulesPath)
	g.Expect(err).NotTo(HaveOccurred())
	dir := t.TempDir()
	g.Expect(WriteRuleFile(filepath.Join(dir, "rule-groups.yaml"), rule.Spec.Groups)).To(Succeed())
	tests, err := os.ReadFile(RulesTestPath)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(os.WriteFile(filepath.Join(dir, "rules_test.yaml"), tests, 0o600)).To(Succeed())
	runPromtool(t, dir, "check", "rules", "rule-groups.yaml")
	runPromtool(t, dir, "test", "rules", "rules_test.yaml")
}

// unitVars are values for the dashboard's variables, for syntax checks.
var unitVars = map[string]string{"namespace": ".*", "breaker": ".*", "__rate_interval": "1m", "__range": "1h"}

func TestDashboard(t *testing.T) {
	g := NewWithT(t)
	d, err := LoadDashboard(DashboardPath)
	g.Expect(err).NotTo(HaveOccurred())
	// Pinned: Grafana migrates a dashboard of an older schema on load, and
	// the panels' options are those of this version.
	g.Expect(d.SchemaVersion).To(Equal(39))
	g.Expect(d.UID).To(Equal("circuit-breakers"))

	variables := map[string]Variable{}
	for _, v := range d.Templating.List {
		variables[v.Name] = v
	}
	g.Expect(variables).To(HaveKeyWithValue("datasource", HaveField("Type", "datasource")))
	for _, name := range []string{"namespace", "breaker"} {
		g.Expect(variables).To(HaveKeyWithValue(name, SatisfyAll(
			HaveField("Type", "query"), HaveField("Multi", true), HaveField("IncludeAll", true),
			// All is every value, including those of breakers created
			// after the dashboard loaded.
			HaveField("AllValue", ".*"))), name)
	}

	types := map[string]bool{}
	for _, p := range d.AllPanels() {
		// Current panel types only: no graph, singlestat or table-old.
		g.Expect(p.Type).To(BeElementOf("stat", "timeseries", "state-timeline", "row"), p.Title)
		types[p.Type] = true
		if p.Type == "row" {
			continue
		}
		g.Expect(p.Datasource).To(Equal(&Datasource{Type: "prometheus", UID: "${datasource}"}), p.Title)
		g.Expect(p.Targets).NotTo(BeEmpty(), p.Title)
		for _, target := range p.Targets {
			g.Expect(target.Datasource).To(Equal(p.Datasource), "%s %s", p.Title, target.RefID)
		}
	}
	g.Expect(types).To(HaveKey("state-timeline"))
	g.Expect(types).To(HaveKey("timeseries"))
	g.Expect(types).To(HaveKey("stat"))

	series := exportedSeries(t)
	queries, err := d.Queries()
	g.Expect(err).NotTo(HaveOccurred())
	queried := map[string]bool{}
	for _, q := range queries {
		expanded := Expand(q.Expr, unitVars)
		g.Expect(Unexpanded(expanded)).To(BeEmpty(), "%s uses only the dashboard's variables", q.Where)
		checkSelectors(g, series, q.Where, q.Expr)
		perBreaker := false
		for _, s := range Selectors(q.Expr) {
			queried[s.Metric] = true
			if _, ok := series[s.Metric]["name"]; ok {
				perBreaker = true
			}
		}
		if perBreaker && q.Panel.Type != "" {
			// A breaker's series follow the namespace and breaker pickers.
			g.Expect(q.Expr).To(SatisfyAll(ContainSubstring(`namespace=~"$namespace"`), ContainSubstring(`name=~"$breaker"`)), q.Where)
		}
	}
	// What the dashboard shows: every series of the README's list.
	for name := range series {
		if name != "up" && !strings.HasSuffix(name, "_sum") && !strings.HasSuffix(name, "_count") {
			g.Expect(queried).To(HaveKey(name), "the dashboard draws %s", name)
		}
	}
	g.Expect(queries).To(ContainElement(HaveField("Expr", ContainSubstring("histogram_quantile(0.99,"))))
}

// Each dashboard query parses as Prometheus parses it: promtool checks a
// rule file with one recording rule per query.
func TestDashboardQueriesParse(t *testing.T) {
	g := NewWithT(t)
	promtool(t)
	d, err := LoadDashboard(DashboardPath)
	g.Expect(err).NotTo(HaveOccurred())
	queries, err := d.Queries()
	g.Expect(err).NotTo(HaveOccurred())
	group := RuleGroup{Name: "dashboard"}
	for i, q := range queries {
		group.Rules = append(group.Rules, Rule{Record: fmt.Sprintf("dashboard:query_%d", i), Expr: Expand(q.Expr, unitVars)})
	}
	dir := t.TempDir()
	g.Expect(WriteRuleFile(filepath.Join(dir, "dashboard.yaml"), []RuleGroup{group})).To(Succeed())
	runPromtool(t, dir, "check", "rules", "dashboard.yaml")
}
