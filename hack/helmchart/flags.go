package main

import (
	"fmt"
	"strings"

	"github.com/circuitbreaker-io/operator/internal/controller"
)

// managerFlag is one flag of cmd/manager as the chart sets it. flags_test
// fails when cmd/manager registers a flag that is neither here nor in
// flagsLeftOut, so a new flag cannot miss the chart.
type managerFlag struct {
	name string
	// value is the values.yaml path that sets it (.Values.<value>).
	value string
	kind  flagKind
	// what the values.yaml comment says.
	doc string
}

type flagKind int

const (
	// boolFlag is passed as --name when its value is true (the manager's default is false).
	boolFlag flagKind = iota
	// stringFlag is passed as --name=<value> when its value is not empty (empty: the manager's default).
	stringFlag
	// countFlag is passed as --name=<value> when its value is not 0 (0: the manager's default).
	countFlag
	// portFlag is always passed, as --name=:<port>; the container port of the same name follows it.
	portFlag
	// metricsAddressFlag is :<metrics.port>, or 0 (off) when metrics.enabled is false.
	metricsAddressFlag
	// secureFlag is true by default: passed as --name=false only when its value is false.
	secureFlag
	// proxyServiceFlag is namespace/name of the release's proxy Service,
	// passed when it is not the manager's default (its name is the
	// release's) or when the value names another.
	proxyServiceFlag
)

var managerFlags = []managerFlag{
	{"leader-elect", "manager.leaderElect", boolFlag,
		"--leader-elect: one replica writes status and Events (a Lease); every replica serves the data plane"},
	{"leader-election-namespace", "manager.leaderElectionNamespace", stringFlag,
		"--leader-election-namespace: where the leader Lease lives; empty: the release's namespace"},
	{"proxy-bind-address", "manager.proxy.port", portFlag,
		"--proxy-bind-address=:<port>: the data plane (the proxy Service's target port)"},
	{"health-probe-bind-address", "manager.healthProbe.port", portFlag,
		"--health-probe-bind-address=:<port>: /healthz and /readyz"},
	{"metrics-bind-address", "metrics.port", metricsAddressFlag,
		"--metrics-bind-address=:<port>, or 0 when metrics.enabled is false"},
	{"metrics-secure", "metrics.secure", secureFlag,
		"--metrics-secure: HTTPS with Kubernetes authentication and authorization; false for plain HTTP"},
	{"enable-http2", "metrics.enableHTTP2", boolFlag,
		"--enable-http2: HTTP/2 on the metrics server (off for the HTTP/2 Rapid Reset CVEs)"},
	{"api-bind-address", "manager.apiBindAddress", stringFlag,
		"--api-bind-address: REST API and dashboard; empty: the manager's 127.0.0.1:8082 (reach it with kubectl port-forward)"},
	{"allow-url-upstreams", "manager.allowURLUpstreams", boolFlag,
		"--allow-url-upstreams: allow spec.upstream.url (a development or single-tenant switch: a URL can point anywhere)"},
	{"upstream-deny-cidrs", "manager.upstreamDenyCIDRs", stringFlag,
		"--upstream-deny-cidrs: comma-separated ranges no Service upstream may reach (set it to the node and pod ranges)"},
	{"max-concurrent-requests", "manager.maxConcurrentRequests", countFlag,
		"--max-concurrent-requests: calls in flight through the proxy, all breakers together; beyond it 503; 0: sized from the memory limit"},
	{"max-connections", "manager.maxConnections", countFlag,
		"--max-connections: caller connections open to the proxy; beyond it new ones wait; 0: sized from the memory limit"},
	{"cluster-domain", "manager.clusterDomain", stringFlag,
		"--cluster-domain: the cluster's DNS domain; empty: cluster.local"},
	{"proxy-service", "manager.proxyService", proxyServiceFlag,
		"--proxy-service: namespace/name of the proxy's Service, which exposed breakers' Services point at; empty: the release's proxy Service"},
	{"notify-webhook", "manager.notifyWebhook", stringFlag,
		"--notify-webhook: URL to POST a JSON notification to on every transition; empty: off"},
}

// flagsLeftOut are the manager's flags the chart does not set, with why.
var flagsLeftOut = map[string]string{
	"kubeconfig": "in a cluster the manager uses its ServiceAccount",
}

// managerArgs is the container's args template: the flags of config/manager
// in their order (so the default values render the same list), then the
// others, each only when its value differs from the manager's default, then
// manager.extraArgs. It also records config's values as the defaults.
func (c *chart) managerArgs(container map[string]any) ([]string, error) {
	byName := map[string]managerFlag{}
	for _, f := range managerFlags {
		byName[f.name] = f
	}
	var lines []string
	seen := map[string]bool{}
	args, _ := container["args"].([]any)
	for _, a := range args {
		arg, _ := a.(string)
		name, value, hasValue := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
		f, known := byName[name]
		if !known || !strings.HasPrefix(arg, "--") {
			return nil, fmt.Errorf("config/manager passes %q, which the chart has no value for (add it to managerFlags)", arg)
		}
		switch f.kind {
		case boolFlag:
			if hasValue && value != "true" {
				return nil, fmt.Errorf("config/manager passes %q; the chart can only pass %s as true", arg, name)
			}
			c.args[name] = "true"
		case portFlag, metricsAddressFlag:
			if !strings.HasPrefix(value, ":") {
				return nil, fmt.Errorf("config/manager passes %q; the chart expects --%s=:<port>", arg, name)
			}
			c.args[name] = strings.TrimPrefix(value, ":")
		case stringFlag, countFlag, proxyServiceFlag:
			c.args[name] = value
		case secureFlag:
			return nil, fmt.Errorf("config/manager passes %q; the chart only passes %s=false", arg, name)
		}
		seen[name] = true
		lines = append(lines, f.template()...)
	}
	for _, f := range managerFlags {
		if !seen[f.name] {
			lines = append(lines, f.template()...)
		}
	}
	lines = append(lines,
		"{{- range .Values.manager.extraArgs }}",
		"- {{ . | quote }}",
		"{{- end }}")
	return lines, nil
}

// endTemplate ends a template's if or with.
const endTemplate = "{{- end }}"

func (f managerFlag) template() []string {
	v := ".Values." + f.value
	switch f.kind {
	case boolFlag:
		return []string{"{{- if " + v + " }}", "- --" + f.name, endTemplate}
	case stringFlag:
		return []string{"{{- with " + v + " }}", `- {{ printf "--` + f.name + `=%s" . | quote }}`, endTemplate}
	case countFlag:
		return []string{"{{- with " + v + " }}", "- --" + f.name + "={{ int64 . }}", endTemplate}
	case portFlag:
		return []string{"- --" + f.name + "=:{{ " + v + " }}"}
	case metricsAddressFlag:
		return []string{
			"{{- if .Values.metrics.enabled }}",
			"- --" + f.name + "=:{{ " + v + " }}",
			"{{- else }}",
			"- --" + f.name + "=0",
			endTemplate,
		}
	case proxyServiceFlag:
		return []string{
			`{{- $proxyService := include "circuit-breaker-operator.resourceName" (dict "suffix" "proxy" "context" $) }}`,
			"{{- if or " + v + ` (ne $proxyService "` + controller.DefaultProxyService + `") }}`,
			`- {{ printf "--` + f.name + `=%s" (` + v + ` | default (printf "%s/%s" $.Release.Namespace $proxyService)) | quote }}`,
			endTemplate,
		}
	default: // secureFlag
		return []string{"{{- if not " + v + " }}", "- --" + f.name + "=false", endTemplate}
	}
}

// defaultValue is the flag's value in values.yaml: config/manager's, else
// the one that leaves the manager's default.
func (c *chart) defaultValue(f managerFlag) string {
	value, inConfig := c.args[f.name]
	switch f.kind {
	case boolFlag:
		if inConfig {
			return "true"
		}
		return "false"
	case secureFlag:
		return "true"
	case portFlag, metricsAddressFlag:
		return value
	case countFlag:
		if value == "" {
			return "0"
		}
		return value
	default:
		return fmt.Sprintf("%q", value)
	}
}
