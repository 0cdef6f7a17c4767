package cbctl_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/cbctl"
)

func TestGet(t *testing.T) {
	ns := newNamespace(t)
	createBreaker(t, ns, "order-api", cbv1.CircuitBreakerSpec{
		Upstream: cbv1.Upstream{Service: &cbv1.ServiceUpstream{Name: "order-api", Port: intstr.FromInt32(8080)}},
	})
	writeStatus(t, ns, "order-api", func(s *cbv1.CircuitBreakerStatus) {
		s.State = cbv1.StateClosed
		s.FailureCount = 2
		s.Upstream = "http://order-api." + ns + ".svc.cluster.local.:8080"
	})
	createBreaker(t, ns, "payments", cbv1.CircuitBreakerSpec{
		Mode:        cbv1.ModeObserve,
		FailureRate: &cbv1.FailureRate{Threshold: 50},
		SlowCall:    &cbv1.SlowCall{DurationThreshold: metav1.Duration{Duration: time.Second}, RateThreshold: 80},
	})
	writeStatus(t, ns, "payments", func(s *cbv1.CircuitBreakerStatus) {
		s.State = cbv1.StateOpen
		s.FailureCount = 3
		s.LastOpenReason = "FailureRate"
		s.OpenUntil = ptr.To(metav1.NewTime(time.Now().Add(time.Hour)))
		s.OpenReplicas = "2/3"
	})
	search := createBreaker(t, ns, "search", cbv1.CircuitBreakerSpec{FailureRate: &cbv1.FailureRate{Threshold: 20}})
	// 0 turns the consecutive rule off; the typed client would omit it, and the API server default it to 5.
	NewWithT(t).Expect(k8sClient.Patch(context.Background(), search,
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"failureThreshold":0}}`)))).To(Succeed())
	writeStatus(t, ns, "search", func(s *cbv1.CircuitBreakerStatus) {
		s.State = cbv1.StateHalfOpen
		s.LastOpenReason = "ConsecutiveFailures"
	})
	// Not yet seen by any manager: no status at all.
	createBreaker(t, ns, "fresh", cbv1.CircuitBreakerSpec{
		Upstream: cbv1.Upstream{Service: &cbv1.ServiceUpstream{Name: "catalog", Port: intstr.FromInt32(80)}},
	})
	other := newNamespace(t)
	createBreaker(t, other, "elsewhere", cbv1.CircuitBreakerSpec{})

	header := `(?m)^NAME\s+STATE\s+MODE\s+WHY\s+FAILURES\s+PROBING IN\s+REPLICAS\s+ENDPOINTS\s+UPSTREAM$`
	rows := map[string]string{
		"order-api": `(?m)^order-api\s+Closed\s+Enforce\s+-\s+2/5\s+-\s+-\s+-\s+http://order-api\.` + ns + `\.svc\.cluster\.local\.:8080$`,
		"payments":  `(?m)^payments\s+Open\s+Observe\s+FailureRate\s+3/5,rate>=50%,slow>=80%\s+5\dm\s+2/3\s+-\s+http://127\.0\.0\.1:9/payments$`,
		"search":    `(?m)^search\s+HalfOpen\s+Enforce\s+ConsecutiveFailures\s+0/-,rate>=20%\s+now\s+-\s+-\s+http://127\.0\.0\.1:9/search$`,
		"fresh":     `(?m)^fresh\s+-\s+Enforce\s+-\s+0/5\s+-\s+-\s+-\s+service/catalog:80$`,
	}

	for name, row := range rows {
		t.Run("a row: "+name, func(t *testing.T) {
			g := NewWithT(t)
			out := kubectlCB("get", name, "-n", ns)
			g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
			g.Expect(out.stdout).To(MatchRegexp(header))
			g.Expect(out.stdout).To(MatchRegexp(row))
		})
	}

	t.Run("the namespace's table lists each breaker and nothing from other namespaces", func(t *testing.T) {
		g := NewWithT(t)
		out := kubectlCB("get", "-n", ns)
		g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
		g.Expect(out.stdout).To(MatchRegexp(header))
		for _, row := range rows {
			g.Expect(out.stdout).To(MatchRegexp(row))
		}
		g.Expect(out.stdout).NotTo(ContainSubstring("elsewhere"))
	})

	t.Run("-A adds the NAMESPACE column and every namespace", func(t *testing.T) {
		g := NewWithT(t)
		out := kubectlCB("get", "-A")
		g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
		g.Expect(out.stdout).To(MatchRegexp(`(?m)^NAMESPACE\s+NAME\s+STATE\s+MODE\s+WHY`))
		g.Expect(out.stdout).To(MatchRegexp(`(?m)^` + ns + `\s+order-api\s+Closed\s+Enforce`))
		g.Expect(out.stdout).To(MatchRegexp(`(?m)^` + other + `\s+elsewhere\s+-\s+Enforce`))
	})

	t.Run("-o json and -o yaml print the object as the API server has it", func(t *testing.T) {
		for _, format := range []string{"json", "yaml"} {
			g := NewWithT(t)
			out := kubectlCB("get", "payments", "-n", ns, "-o", format)
			g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
			var cb cbv1.CircuitBreaker
			if format == "json" {
				g.Expect(json.Unmarshal([]byte(out.stdout), &cb)).To(Succeed(), out.stdout)
			} else {
				g.Expect(yaml.UnmarshalStrict([]byte(out.stdout), &cb)).To(Succeed(), out.stdout)
			}
			g.Expect(cb.APIVersion).To(Equal("circuitbreaker.io/v1alpha1"))
			g.Expect(cb.Kind).To(Equal("CircuitBreaker"))
			g.Expect(cb.Status.State).To(Equal(cbv1.StateOpen))
			g.Expect(cb.Status.OpenReplicas).To(Equal("2/3"))
			g.Expect(cb.Spec.Mode).To(Equal(cbv1.ModeObserve))
			g.Expect(cb.ManagedFields).To(BeEmpty(), "as kubectl, managed fields only with --show-managed-fields")
		}
	})

	t.Run("-o json of the namespace is a list of its breakers", func(t *testing.T) {
		g := NewWithT(t)
		out := kubectlCB("get", "-n", ns, "-o", "json")
		g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
		var list cbv1.CircuitBreakerList
		g.Expect(json.Unmarshal([]byte(out.stdout), &list)).To(Succeed(), out.stdout)
		var names []string
		for _, cb := range list.Items {
			names = append(names, cb.Name)
		}
		g.Expect(names).To(ConsistOf("order-api", "payments", "search", "fresh"))
	})

	t.Run("errors exit 1 and say what is wrong", func(t *testing.T) {
		for _, bad := range []struct {
			args []string
			want string
		}{
			{[]string{"get", "nope", "-n", ns}, `no CircuitBreaker "nope" in namespace "` + ns + `"`},
			{[]string{"get", "-n", ns, "-o", "xml"}, `unable to match a printer suitable for the output format "xml"`},
			{[]string{"get", "order-api", "-A"}, "use -n with NAME, not -A"},
			{[]string{"get", "a", "b", "-n", ns}, "accepts at most 1 arg(s), received 2"},
		} {
			g := NewWithT(t)
			out := kubectlCB(bad.args...)
			g.Expect(out.code).To(Equal(cbctl.ExitError), "%v\n%s", bad.args, out.stdout)
			g.Expect(out.stderr).To(ContainSubstring(bad.want), "%v", bad.args)
			g.Expect(out.stdout).To(BeEmpty())
		}
	})

	t.Run("an empty namespace says so", func(t *testing.T) {
		g := NewWithT(t)
		empty := newNamespace(t)
		out := kubectlCB("get", "-n", empty)
		g.Expect(out.code).To(Equal(cbctl.ExitOK))
		g.Expect(out.stderr).To(Equal("No CircuitBreakers found in namespace " + empty + ".\n"))
		g.Expect(out.stdout).To(BeEmpty())
	})
}

func TestGetWatch(t *testing.T) {
	ns := newNamespace(t)
	createBreaker(t, ns, "order-api", cbv1.CircuitBreakerSpec{})
	writeStatus(t, ns, "order-api", func(s *cbv1.CircuitBreakerStatus) { s.State = cbv1.StateClosed })

	t.Run("-w prints the table, then a row per change, until interrupted", func(t *testing.T) {
		g := NewWithT(t)
		run := startKubectlCB(t, "get", "-n", ns, "-w")
		g.Eventually(run.stdout.String).Should(MatchRegexp(`(?m)^NAME\s+STATE.*\norder-api\s+Closed\s+Enforce\s+-\s+0/5\s`))
		writeStatus(t, ns, "order-api", func(s *cbv1.CircuitBreakerStatus) {
			s.State = cbv1.StateOpen
			s.FailureCount = 5
			s.LastOpenReason = "ConsecutiveFailures"
		})
		g.Eventually(run.stdout.String).Should(MatchRegexp(`(?m)^order-api\s+Open\s+Enforce\s+ConsecutiveFailures\s+5/5\s`))
		createBreaker(t, ns, "late", cbv1.CircuitBreakerSpec{})
		g.Eventually(run.stdout.String).Should(MatchRegexp(`(?m)^late\s+-\s+Enforce\s`))
		g.Expect(run.interrupt(g)).To(Equal(cbctl.ExitOK))
		g.Expect(run.stdout.String()).To(MatchRegexp(`^NAME\s+STATE[^\n]*\n(order-api[^\n]*\n){2}late[^\n]*\n$`),
			"one header, then one row per state the breakers were in")
	})

	t.Run("-w -o json prints each version of the object", func(t *testing.T) {
		g := NewWithT(t)
		run := startKubectlCB(t, "get", "order-api", "-n", ns, "-w", "-o", "json")
		g.Eventually(run.stdout.String).Should(ContainSubstring(`"state": "Open"`))
		writeStatus(t, ns, "order-api", func(s *cbv1.CircuitBreakerStatus) { s.State = cbv1.StateHalfOpen })
		g.Eventually(run.stdout.String).Should(ContainSubstring(`"state": "HalfOpen"`))
		g.Expect(run.interrupt(g)).To(Equal(cbctl.ExitOK))
		g.Expect(run.stdout.String()).NotTo(ContainSubstring(`"name": "late"`), "NAME limits the watch to that breaker")
	})

	t.Run("-w of an unknown breaker is an error, not a wait", func(t *testing.T) {
		g := NewWithT(t)
		out := kubectlCB("get", "nope", "-n", ns, "-w")
		g.Expect(out.code).To(Equal(cbctl.ExitError))
		g.Expect(out.stderr).To(ContainSubstring(`no CircuitBreaker "nope" in namespace "` + ns + `"`))
	})
}
