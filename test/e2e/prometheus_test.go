//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/test/monitoring"
)

// metricsJob is the job the ServiceMonitor gives the manager's targets (the
// metrics Service's name), which CircuitBreakerOperatorAbsent looks for.
const metricsJob = "circuit-breaker-operator-metrics"

// promServer is Debian's Prometheus on loopback, scraping the manager.
type promServer struct {
	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    *syncBuffer
}

// startPrometheus runs Prometheus with the repository's rules (CircuitBreakerOpen's
// `for` shortened to openFor, so the test need not wait 5 minutes) and one
// scrape of the manager's metrics as the ServiceMonitor configures it:
// HTTPS with the token, the self-signed certificate accepted, and labels
// honoured. The target carries the labels Kubernetes service discovery
// gives it, the operator's namespace among them, so that honour_labels
// decides which namespace a breaker's series get.
func startPrometheus(t *testing.T, bin, metricsAddr, token string, openFor time.Duration) *promServer {
	g := NewWithT(t)
	dir := t.TempDir()
	rule, err := monitoring.LoadRules(monitoring.RulesPath)
	g.Expect(err).NotTo(HaveOccurred())
	groups := rule.Spec.Groups
	shortened := false
	for i := range groups {
		for j := range groups[i].Rules {
			if groups[i].Rules[j].Alert == "CircuitBreakerOpen" {
				groups[i].Rules[j].For = openFor.String()
				shortened = true
			}
		}
	}
	g.Expect(shortened).To(BeTrue())
	g.Expect(monitoring.WriteRuleFile(filepath.Join(dir, "rules.yaml"), groups)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(dir, "token"), []byte(token), 0o600)).To(Succeed())
	// Scrapes every 2 s, rules every second: pending and firing show within
	// seconds. The scrape's timeout allows for the manager's token review.
	config := fmt.Sprintf(`global: {scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 1s}
rule_files: [rules.yaml]
scrape_configs:
- job_name: %s
  honor_labels: true
  scheme: https
  authorization: {credentials_file: %s}
  tls_config: {insecure_skip_verify: true}
  static_configs:
  - targets: [%q]
    labels: {namespace: %s, service: %s}
`, metricsJob, filepath.Join(dir, "token"), metricsAddr, operatorNamespace, metricsJob)
	g.Expect(os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o600)).To(Succeed())

	p := &promServer{addr: freeAddr(g), exited: make(chan struct{}), log: &syncBuffer{}}
	p.cmd = exec.Command(bin, "--config.file", filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path", filepath.Join(dir, "data"), "--web.listen-address", p.addr)
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	g.Expect(p.cmd.Start()).To(Succeed())
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			fmt.Fprintf(os.Stderr, "\n===== prometheus log =====\n%s\n", p.log)
		}
	})
	g.Eventually(func() int { return httpGet(g, "http://"+p.addr+"/-/ready") }, 30*time.Second, 100*time.Millisecond).
		Should(Equal(http.StatusOK), "Prometheus is ready")
	return p
}

// apiResponse is the envelope of Prometheus's HTTP API.
type apiResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

// api GETs an endpoint of Prometheus's HTTP API and returns its data; a
// query Prometheus refuses fails g with Prometheus's message.
func (p *promServer) api(g Gomega, path string, params url.Values) json.RawMessage {
	resp, err := httpClient.Get("http://" + p.addr + path + "?" + params.Encode())
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	var body apiResponse
	g.Expect(json.NewDecoder(resp.Body).Decode(&body)).To(Succeed())
	g.Expect(body.Status).To(Equal("success"), "%s %v: %s: %s", path, params, body.ErrorType, body.Error)
	return body.Data
}

// sample is one element of an instant vector.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
}

// query runs an instant query and returns its vector.
func (p *promServer) query(g Gomega, expr string) []sample {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	g.Expect(json.Unmarshal(p.api(g, "/api/v1/query", url.Values{"query": {expr}}), &data)).To(Succeed())
	g.Expect(data.ResultType).To(Equal("vector"), expr)
	var samples []sample
	g.Expect(json.Unmarshal(data.Result, &samples)).To(Succeed())
	return samples
}

// alert is one active alert of /api/v1/alerts.
type alert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
}

func (p *promServer) alerts(g Gomega) []alert {
	var data struct {
		Alerts []alert `json:"alerts"`
	}
	g.Expect(json.Unmarshal(p.api(g, "/api/v1/alerts", nil), &data)).To(Succeed())
	return data.Alerts
}

// TestPrometheus loads the alert rules and runs the dashboard's queries on a
// real Prometheus scraping the real manager, as the ServiceMonitor would.
func TestPrometheus(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not found: apt-get install prometheus (Debian's package) to run the Prometheus e2e")
	}
	g := NewWithT(t)
	hooks := newHookReceiver(t)
	c := startCluster(t)
	// With a webhook, the manager exports circuitbreaker_notifications_dropped_total.
	c.webhook = hooks.URL
	up := newUpstream(t)
	c.kubectl(g, "apply", "-k", filepath.Join(root, "config", "crd"))
	c.kubectl(g, "wait", "--for", "condition=established", "crd/circuitbreakers.circuitbreaker.io", "--timeout=30s")
	// The RBAC the manager runs with, and the metrics-reader ClusterRole
	// Prometheus's ServiceAccount is bound to: the installer's.
	c.kubectl(g, "apply", "-f", filepath.Join(root, "dist", "install.yaml"))
	c.startManager(t)
	c.kubectl(g, "create", "serviceaccount", "prometheus", "-n", operatorNamespace)
	c.kubectl(g, "create", "clusterrolebinding", "prometheus-metrics-reader",
		"--clusterrole=circuit-breaker-operator-metrics-reader", "--serviceaccount="+operatorNamespace+":prometheus")
	token := strings.TrimSpace(c.kubectl(g, "create", "token", "prometheus", "-n", operatorNamespace, "--duration=1h"))
	g.Eventually(func() int { return c.scrape(g, token).status }).Should(Equal(http.StatusOK), "the token may read the metrics")

	// A breaker with a rate window, so that its failure and slow-call rate
	// gauges exist too; thresholds the test never reaches, so three
	// failures in a row open it, and an hour's recovery holds it open.
	c.kubectlApply(t, fmt.Sprintf(`apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: orders, namespace: default}
spec:
  upstream: {url: %q}
  failureThreshold: 3
  failureRate: {threshold: 100, minimumRequests: 1000, window: 10s}
  slowCall: {durationThreshold: 1s, rateThreshold: 100}
  recoveryTimeout: 1h
  requestTimeout: 2s
`, up.URL))
	route := "http://" + c.proxyAddr + "/default/orders/x"
	g.Eventually(func() int { return httpGet(g, route) }, 10*time.Second, 100*time.Millisecond).Should(Equal(http.StatusOK))
	for range 5 {
		g.Expect(httpGet(g, route)).To(Equal(http.StatusOK))
	}

	// 10 s: pending long enough for a poll to see it, short enough to wait for.
	p := startPrometheus(t, bin, c.metrics, token, 10*time.Second)
	g.Eventually(func(g Gomega) {
		g.Expect(p.query(g, `up{job="`+metricsJob+`"} == 1`)).To(HaveLen(1))
		g.Expect(p.query(g, `circuitbreaker_state{name="orders", state="Closed"} == 1`)).To(HaveLen(1))
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed(), "Prometheus scrapes the manager with the token and sees the breaker closed")
	g.Expect(p.alerts(g)).NotTo(ContainElement(HaveField("Labels", HaveKeyWithValue("alertname", "CircuitBreakerOpen"))))

	// Held open: the upstream keeps failing, and no probe comes for an hour.
	up.failing.Store(true)
	for range 3 {
		g.Expect(httpGet(g, route)).To(Equal(http.StatusInternalServerError))
	}
	g.Eventually(func() string {
		return c.kubectlQuiet("get", "cb", "orders", "-o", "jsonpath={.status.state}")
	}, 10*time.Second, 100*time.Millisecond).Should(Equal("Open"))
	g.Expect(httpGet(g, route)).To(Equal(http.StatusServiceUnavailable), "rejected")

	openAlert := func(state string) func(g Gomega) []alert {
		return func(g Gomega) []alert {
			var found []alert
			for _, a := range p.alerts(g) {
				if a.Labels["alertname"] == "CircuitBreakerOpen" && a.State == state {
					found = append(found, a)
				}
			}
			return found
		}
	}
	g.Eventually(openAlert("pending"), 30*time.Second, 200*time.Millisecond).Should(HaveLen(1), "CircuitBreakerOpen is pending")
	g.Eventually(openAlert("firing"), 30*time.Second, 200*time.Millisecond).Should(HaveLen(1), "then firing")
	firing := openAlert("firing")(g)[0]
	// honor_labels kept the breaker's namespace: without it the alert
	// would say the operator's namespace, and exported_namespace would
	// hold the breaker's.
	g.Expect(firing.Labels).To(Equal(map[string]string{
		"alertname": "CircuitBreakerOpen", "namespace": "default", "name": "orders", "severity": "warning",
	}))
	g.Expect(firing.Annotations).To(HaveKeyWithValue("summary", "Circuit breaker default/orders has been open for 5 minutes."))
	g.Expect(firing.Annotations).To(HaveKeyWithValue("runbook_url", HaveSuffix("#circuitbreakeropen")))
	g.Expect(p.query(g, `{exported_namespace!=""}`)).To(BeEmpty(), "no series had its namespace renamed")
	// A series without a namespace of its own gets the target's.
	g.Expect(p.query(g, `circuitbreaker_notifications_dropped_total`)).To(ConsistOf(
		HaveField("Metric", HaveKeyWithValue("namespace", operatorNamespace))))
	// The operator-absent rule looks for the job the target has: it is up.
	g.Expect(p.alerts(g)).NotTo(ContainElement(HaveField("Labels", HaveKeyWithValue("alertname", "CircuitBreakerOperatorAbsent"))))

	// Every dashboard query, with the variables as Grafana would set them
	// for this breaker, answers without error; each returns data but the
	// endpoint panels', whose series exist only for Service upstreams (this
	// breaker has a URL upstream).
	d, err := monitoring.LoadDashboard(monitoring.DashboardPath)
	g.Expect(err).NotTo(HaveOccurred())
	queries, err := d.Queries()
	g.Expect(err).NotTo(HaveOccurred())
	vars := map[string]string{"namespace": "default", "breaker": "orders", "__rate_interval": "10s", "__range": "5m"}
	for _, q := range queries {
		expr := monitoring.Expand(q.Expr, vars)
		noData := strings.Contains(expr, "circuitbreaker_endpoint")
		g.Eventually(func(g Gomega) {
			samples := p.query(g, expr)
			if !noData {
				g.Expect(samples).NotTo(BeEmpty())
			}
		}, 20*time.Second, 500*time.Millisecond).Should(Succeed(), "%s: %s", q.Where, expr)
		t.Logf("%s answers: %s", q.Where, expr)
	}
	// The state timeline draws the breaker Open (2), from every replica's
	// state series.
	g.Expect(p.query(g, monitoring.Expand(stateTimeline(g, d), vars))).To(ConsistOf(
		HaveField("Value", ContainElement("2"))))
}

// stateTimeline is the state-timeline panel's query.
func stateTimeline(g Gomega, d *monitoring.Dashboard) string {
	for _, panel := range d.AllPanels() {
		if panel.Type == "state-timeline" {
			g.Expect(panel.Targets).To(HaveLen(1))
			return panel.Targets[0].Expr
		}
	}
	g.Expect("state-timeline").To(BeEmpty(), "the dashboard has a state-timeline panel")
	return ""
}
