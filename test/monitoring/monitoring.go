// Package monitoring reads the alert rules (config/prometheus/rules.yaml) and
// the Grafana dashboard (config/grafana/circuit-breakers.json) as Prometheus
// and Grafana would, for the tests that check them: promtool's unit tests
// and query checks here, and the e2e that runs them on a real Prometheus.
package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/circuitbreaker-io/operator/internal/controlplane"
)

// Paths of the files, from the repository's root.
var (
	RulesPath     = filepath.Join(controlplane.RepoRoot(), "config", "prometheus", "rules.yaml")
	RulesTestPath = filepath.Join(controlplane.RepoRoot(), "config", "prometheus", "rules_test.yaml")
	DashboardPath = filepath.Join(controlplane.RepoRoot(), "config", "grafana", "circuit-breakers.json")
)

// PrometheusRule is the part of a monitoring.coreos.com/v1 PrometheusRule
// the tests read.
type PrometheusRule struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   map[string]any `json:"metadata"`
	Spec       struct {
		Groups []RuleGroup `json:"groups"`
	} `json:"spec"`
}

// RuleGroup is a Prometheus rule group, as a rule file holds it.
type RuleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []Rule `json:"rules"`
}

// Rule is an alerting or recording rule.
type Rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// LoadRules reads the PrometheusRule at path, strictly: a misspelt field is
// an error here, as the Prometheus Operator's CRD would refuse it.
func LoadRules(path string) (*PrometheusRule, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rule PrometheusRule
	if err := yaml.UnmarshalStrict(data, &rule); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" {
		return nil, fmt.Errorf("%s: %s %s is not a monitoring.coreos.com/v1 PrometheusRule", path, rule.APIVersion, rule.Kind)
	}
	return &rule, nil
}

// WriteRuleFile writes groups as a plain rule file, the form promtool and
// Prometheus read (the Prometheus Operator does the same with a spec).
func WriteRuleFile(path string, groups []RuleGroup) error {
	data, err := yaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// Dashboard is the part of a Grafana dashboard the tests read.
type Dashboard struct {
	Title         string `json:"title"`
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []Variable `json:"list"`
	} `json:"templating"`
	Panels []Panel `json:"panels"`
}

// Variable is a dashboard variable.
type Variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Datasource *Datasource     `json:"datasource"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
}

// Panel is a dashboard panel; a row holds panels of its own.
type Panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *Datasource `json:"datasource"`
	Targets    []Target    `json:"targets"`
	Panels     []Panel     `json:"panels"`
}

// Datasource names a panel's or a query's data source.
type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Target is one query of a panel.
type Target struct {
	RefID        string      `json:"refId"`
	Expr         string      `json:"expr"`
	Instant      bool        `json:"instant"`
	LegendFormat string      `json:"legendFormat"`
	Datasource   *Datasource `json:"datasource"`
}

// LoadDashboard reads the dashboard at path.
func LoadDashboard(path string) (*Dashboard, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d Dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &d, nil
}

// Query is one PromQL query of the dashboard, with where it comes from.
type Query struct {
	// Where is e.g. `panel "State" A`, or `variable breaker`.
	Where string
	Expr  string
	Panel Panel
}

// AllPanels is every panel, those in rows included.
func (d *Dashboard) AllPanels() []Panel {
	var all []Panel
	var walk func([]Panel)
	walk = func(panels []Panel) {
		for _, p := range panels {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return all
}

// labelValues is Grafana's label_values(selector, label) variable query.
var labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*(\w+)\s*\)\s*$`)

// Queries is every PromQL query: each panel's targets, and the series
// selector of each label_values variable (Grafana asks Prometheus for that
// selector's series).
func (d *Dashboard) Queries() ([]Query, error) {
	var queries []Query
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, err := v.PromQL()
		if err != nil {
			return nil, err
		}
		queries = append(queries, Query{Where: "variable " + v.Name, Expr: q})
	}
	for _, p := range d.AllPanels() {
		for _, t := range p.Targets {
			queries = append(queries, Query{Where: fmt.Sprintf("panel %q %s", p.Title, t.RefID), Expr: t.Expr, Panel: p})
		}
	}
	return queries, nil
}

// PromQL is the series selector of a label_values query variable.
func (v Variable) PromQL() (string, error) {
	// Grafana writes a Prometheus variable's query as a string, or as an
	// object with the string in "query".
	var query string
	if err := json.Unmarshal(v.Query, &query); err != nil {
		var object struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &object); err != nil {
			return "", fmt.Errorf("variable %s: query %s: %w", v.Name, v.Query, err)
		}
		query = object.Query
	}
	m := labelValues.FindStringSubmatch(query)
	if m == nil {
		return "", fmt.Errorf("variable %s: %q is not label_values(selector, label)", v.Name, query)
	}
	return m[1], nil
}

// variableRef is how Grafana names a variable in a query: $name, ${name}
// or ${name:format}, [[name]].
var variableRef = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]`)

// Expand substitutes Grafana's variables in expr as Grafana would with
// those values (a regex for a multi-value variable, a duration for
// $__rate_interval and $__range); a variable not in vars is left as it is,
// for the caller to find.
func Expand(expr string, vars map[string]string) string {
	return variableRef.ReplaceAllStringFunc(expr, func(ref string) string {
		m := variableRef.FindStringSubmatch(ref)
		name := m[1] + m[2] + m[3]
		if value, ok := vars[name]; ok {
			return value
		}
		return ref
	})
}

// Unexpanded returns the variable references left in expr.
func Unexpanded(expr string) []string {
	return variableRef.FindAllString(expr, -1)
}

// Selector is a metric name and its label matchers in a query.
type Selector struct {
	Metric   string
	Matchers []Matcher
}

// Matcher is a label matcher, e.g. state="Open".
type Matcher struct {
	Label, Op, Value string
}

var (
	// A metric name with its matchers, or a bare one; PromQL's functions
	// and keywords are not circuitbreaker_ or up, the only names queried.
	selectorRE = regexp.MustCompile(`\b(circuitbreaker_\w+|up)\b(\{[^}]*\})?`)
	matcherRE  = regexp.MustCompile(`(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
)

// Selectors finds the metric selectors of a query, for checks against what
// the code exports. It is no PromQL parser (promtool is the test of
// syntax), only enough for this repository's queries.
func Selectors(expr string) []Selector {
	found := selectorRE.FindAllStringSubmatch(expr, -1)
	out := make([]Selector, 0, len(found))
	for _, m := range found {
		s := Selector{Metric: m[1]}
		for _, mm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
			s.Matchers = append(s.Matchers, Matcher{Label: mm[1], Op: mm[2], Value: mm[3]})
		}
		out = append(out, s)
	}
	return out
}

// Values is the label values a matcher accepts, when it names them: the
// value of =, or the alternatives of a =~ made only of them.
func (m Matcher) Values() []string {
	switch m.Op {
	case "=":
		return []string{m.Value}
	case "=~":
		if regexp.MustCompile(`^[\w-]+(\|[\w-]+)*$`).MatchString(m.Value) {
			return strings.Split(m.Value, "|")
		}
	}
	return nil
}
