package main

import (
	"fmt"
	"strconv"
	"strings"
)

// values writes values.yaml: each default is config/'s, so the default
// values render the objects of dist/install.yaml.
func (c *chart) values() (string, error) {
	for name, port := range map[string]string{"proxy-bind-address": "proxy", "health-probe-bind-address": "health", "metrics-bind-address": "metrics"} {
		if c.args[name] != strconv.FormatInt(c.ports[port], 10) {
			return "", fmt.Errorf("config/manager: --%s is :%s but the container port %s is %d", name, c.args[name], port, c.ports[port])
		}
	}
	flagByValue := map[string]managerFlag{}
	for _, f := range managerFlags {
		flagByValue[f.value] = f
	}
	var b strings.Builder
	b.WriteString(header)
	b.WriteString("# The defaults render the objects of dist/install.yaml (README: Install with Helm).\n")
	w := func(indent int, comment, key string, value any) {
		pad := strings.Repeat("  ", indent)
		for _, line := range strings.Split(comment, "\n") {
			if line != "" {
				b.WriteString(pad + "# " + line + "\n")
			}
		}
		switch v := value.(type) {
		case nil:
			b.WriteString(pad + key + ":\n")
		case string:
			b.WriteString(pad + key + ": " + v + "\n")
		default:
			text := strings.TrimSuffix(indentYAML(v, pad+"  "), "\n")
			if !strings.Contains(text, "\n") && (strings.TrimSpace(text) == "{}" || strings.TrimSpace(text) == "[]") {
				b.WriteString(pad + key + ": " + strings.TrimSpace(text) + "\n")
			} else {
				b.WriteString(pad + key + ":\n" + text + "\n")
			}
		}
	}
	flag := func(indent int, key, value string) {
		f, ok := flagByValue[value]
		if !ok {
			panic("no manager flag sets " + value)
		}
		w(indent, f.doc, key, c.defaultValue(f))
	}

	b.WriteString("\n")
	w(0, "", "namespace", nil)
	w(1, "Create the release's namespace, labelled for the restricted Pod Security\n"+
		"Standard, as dist/install.yaml does; false: install into an existing one.", "create", "true")
	b.WriteString("\n")
	w(0, "The CircuitBreaker CRD (templates/crd).", "crd", nil)
	w(1, "Install the CRD with the chart.", "enabled", "true")
	w(1, "Leave the CRD, and so every CircuitBreaker, in place when the release\nis uninstalled (helm.sh/resource-policy: keep).", "keep", "true")
	b.WriteString("\n")
	w(0, "The manager Deployment (templates/manager): the controller and the data plane.", "manager", nil)
	w(1, "Every replica serves the data plane; one leads (writes status and Events).", "replicas", fmt.Sprint(c.replicas))
	w(1, "", "image", nil)
	w(2, "", "repository", c.image.repository)
	w(2, "Empty: the chart's appVersion.", "tag", c.image.tag)
	w(2, "Empty: the cluster's default (IfNotPresent, or Always for :latest).", "pullPolicy", `""`)
	w(1, "", "imagePullSecrets", []any{})
	b.WriteString("\n  # The manager's flags (README: The manager). Empty strings and false leave\n  # the manager's own default.\n")
	flag(1, "leaderElect", "manager.leaderElect")
	flag(1, "leaderElectionNamespace", "manager.leaderElectionNamespace")
	w(1, "", "proxy", nil)
	flag(2, "port", "manager.proxy.port")
	w(1, "", "healthProbe", nil)
	flag(2, "port", "manager.healthProbe.port")
	flag(1, "apiBindAddress", "manager.apiBindAddress")
	flag(1, "allowURLUpstreams", "manager.allowURLUpstreams")
	flag(1, "upstreamDenyCIDRs", "manager.upstreamDenyCIDRs")
	flag(1, "maxConcurrentRequests", "manager.maxConcurrentRequests")
	flag(1, "maxConnections", "manager.maxConnections")
	flag(1, "clusterDomain", "manager.clusterDomain")
	flag(1, "proxyService", "manager.proxyService")
	flag(1, "notifyWebhook", "manager.notifyWebhook")
	w(1, "More flags, after the ones above, e.g. [--zap-log-level=debug].", "extraArgs", []any{})
	w(1, "More environment variables of the manager container.", "env", []any{})
	b.WriteString("\n")
	w(1, "Memory: about 56 MiB plus 6.6 KiB per breaker, and a quarter of the limit for calls in\n"+
		"flight, an eighth for connections (the manager sizes its bounds from it); request = limit,\n"+
		"no CPU limit (CFS throttling stalls calls). See the README's sizing table.", "resources", c.resources)
	w(1, "", "podSecurityContext", c.podSecurityContext)
	w(1, "", "securityContext", c.securityContext)
	w(1, "One replica per node and zone where the cluster allows it.", "topologySpreadConstraints", c.topologySpreadConstraints)
	w(1, "Covers the preStop pause and the 20 s drain of in-flight calls.", "terminationGracePeriodSeconds", fmt.Sprint(c.terminationGracePeriodSeconds))
	w(1, "", "nodeSelector", map[string]any{})
	w(1, "", "tolerations", []any{})
	w(1, "", "affinity", map[string]any{})
	w(1, "A PriorityClass of the cluster's; empty: the chart's own (priorityClass.create), else none.", "priorityClassName", `""`)
	b.WriteString("\n")
	w(0, "The manager's PriorityClass, <release>-critical (templates/manager): above ordinary workloads,\nbelow the system's classes.", "priorityClass", nil)
	w(1, "false: none is created.", "create", "true")
	b.WriteString("\n")
	w(0, "The metrics endpoint (HTTPS with a token) and its Service (templates/metrics).", "metrics", nil)
	w(1, "false: no metrics endpoint, Service or ServiceMonitor.", "enabled", "true")
	flag(1, "port", "metrics.port")
	flag(1, "secure", "metrics.secure")
	flag(1, "enableHTTP2", "metrics.enableHTTP2")
	b.WriteString("\n")
	w(0, "A Prometheus Operator ServiceMonitor for the metrics (templates/prometheus/monitor.yaml);\n"+
		"Prometheus's ServiceAccount needs the metrics-reader ClusterRole.", "prometheus", nil)
	w(1, "", "enabled", "false")
	w(1, "Labels your Prometheus selects ServiceMonitors by.", "additionalLabels", map[string]any{})
	b.WriteString("\n")
	w(0, "The alert rules, a PrometheusRule (templates/prometheus/rules.yaml, from config/prometheus/rules.yaml).", "prometheusRule", nil)
	w(1, "", "enabled", "false")
	w(1, "Labels your Prometheus selects rules by.", "additionalLabels", map[string]any{})
	b.WriteString("\n")
	w(0, "Only namespaces labelled circuitbreaker.io/callers=true reach the proxy, and only\n"+
		"namespaces labelled metrics=enabled the metrics (templates/network-policy).", "networkPolicy", nil)
	w(1, "", "enabled", "false")
	return b.String(), nil
}

const helpers = header + `{{/*
The chart's name, at most 63 characters.
*/}}
{{- define "circuit-breaker-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: the release name when it contains the
chart's name (helm install circuit-breaker-operator ... gives the names of
dist/install.yaml), else <release>-<chart>.
*/}}
{{- define "circuit-breaker-operator.fullname" -}}
{{- $name := include "circuit-breaker-operator.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
<fullname>-<suffix>, the full name shortened so the whole fits 63 characters
(Service names are DNS labels). Takes (dict "suffix" "..." "context" $).
*/}}
{{- define "circuit-breaker-operator.resourceName" -}}
{{- $fullname := include "circuit-breaker-operator.fullname" .context }}
{{- $room := sub 62 (len .suffix) | int }}
{{- printf "%s-%s" ($fullname | trunc $room | trimSuffix "-") .suffix }}
{{- end }}

{{/*
The labels the chart adds to every object's own (not to selectors, which
must match dist/install.yaml's).
*/}}
{{- define "circuit-breaker-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
`
