package cbctl_test

import (
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/cbctl"
)

// transition appends a transition to the breaker's history, as the manager records one.
func transition(t *testing.T, namespace, name string, offset time.Duration, from, to, reason string) {
	writeStatus(t, namespace, name, func(s *cbv1.CircuitBreakerStatus) {
		s.State = to
		s.History = append(s.History, cbv1.TransitionRecord{Time: metav1.NewMicroTime(at(offset)), From: from, To: to, Reason: reason})
	})
}

func TestWatch(t *testing.T) {
	ns, other := newNamespace(t), newNamespace(t)
	createBreaker(t, ns, "order-api", cbv1.CircuitBreakerSpec{})
	transition(t, ns, "order-api", 0, cbv1.StateClosed, cbv1.StateOpen, "before the watch")
	createBreaker(t, other, "elsewhere", cbv1.CircuitBreakerSpec{})

	g := NewWithT(t)
	inNamespace := startKubectlCB(t, "watch", "-n", ns)
	everywhere := startKubectlCB(t, "watch", "-A")
	// The header comes once the breakers are listed: no transition after it is missed.
	g.Eventually(inNamespace.stdout.String).Should(MatchRegexp(`^TIME\s+NAME\s+FROM\s+TO\s+REASON\n$`))
	g.Eventually(everywhere.stdout.String).Should(MatchRegexp(`^TIME\s+NAMESPACE\s+NAME\s+FROM\s+TO\s+REASON\n$`))

	t.Run("one line per transition the history gains", func(t *testing.T) {
		g := NewWithT(t)
		transition(t, ns, "order-api", time.Minute, cbv1.StateOpen, cbv1.StateHalfOpen, "recovery timeout of 30s elapsed")
		g.Eventually(inNamespace.stdout.String).Should(MatchRegexp(
			`(?m)^2026-12-01T10:01:00\.000Z\s+order-api\s+Open\s+HalfOpen\s+recovery timeout of 30s elapsed$`))
		header, line, _ := strings.Cut(inNamespace.stdout.String(), "\n")
		g.Expect(strings.Index(line, "recovery timeout")).To(Equal(strings.Index(header, "REASON")),
			"the header, printed before any line, lines up with them:\n%s\n%s", header, line)
		// Two transitions in one status write: two lines, in order.
		writeStatus(t, ns, "order-api", func(s *cbv1.CircuitBreakerStatus) {
			s.State = cbv1.StateOpen
			s.History = append(s.History,
				cbv1.TransitionRecord{Time: metav1.NewMicroTime(at(2 * time.Minute)),
					From: cbv1.StateHalfOpen, To: cbv1.StateClosed, Reason: "1 successful probe in a row"},
				cbv1.TransitionRecord{Time: metav1.NewMicroTime(at(3 * time.Minute)),
					From: cbv1.StateClosed, To: cbv1.StateOpen, Reason: "5 consecutive failures, last: 503"})
		})
		g.Eventually(inNamespace.stdout.String).Should(MatchRegexp(
			`(?m)^2026-12-01T10:02:00\.000Z\s+order-api\s+HalfOpen\s+Closed\s+1 successful probe in a row\n` +
				`2026-12-01T10:03:00\.000Z\s+order-api\s+Closed\s+Open\s+5 consecutive failures, last: 503$`))
	})

	t.Run("a status write without a new transition prints nothing", func(t *testing.T) {
		g := NewWithT(t)
		writeStatus(t, ns, "order-api", func(s *cbv1.CircuitBreakerStatus) { s.FailureCount = 7 })
		// The next transition's line is the fact to wait on: nothing came before it.
		transition(t, ns, "order-api", 4*time.Minute, cbv1.StateOpen, cbv1.StateHalfOpen, "after the count")
		g.Eventually(inNamespace.stdout.String).Should(MatchRegexp(`(?m)^2026-12-01T10:04:00\.000Z\s+order-api\s+Open\s+HalfOpen\s+after the count\n\z`))
		g.Expect(inNamespace.stdout.String()).To(MatchRegexp(`^TIME[^\n]*\n([^\n]*\n){4}$`), "the header and four transitions")
		g.Expect(inNamespace.stdout.String()).NotTo(ContainSubstring("before the watch"))
	})

	t.Run("-A shows every namespace, with the NAMESPACE column; -n only its own", func(t *testing.T) {
		g := NewWithT(t)
		transition(t, other, "elsewhere", 5*time.Minute, cbv1.StateClosed, cbv1.StateOpen, "in the other namespace")
		g.Eventually(everywhere.stdout.String).Should(MatchRegexp(
			`(?m)^2026-12-01T10:05:00\.000Z\s+` + other + `\s+elsewhere\s+Closed\s+Open\s+in the other namespace$`))
		g.Expect(everywhere.stdout.String()).To(MatchRegexp(`(?m)^2026-12-01T10:01:00\.000Z\s+` + ns + `\s+order-api\s+Open\s+HalfOpen`))
		g.Expect(inNamespace.stdout.String()).NotTo(ContainSubstring("elsewhere"))
	})

	t.Run("an interrupt ends it with exit code 0", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(inNamespace.interrupt(g)).To(Equal(cbctl.ExitOK))
		g.Expect(everywhere.interrupt(g)).To(Equal(cbctl.ExitOK))
		g.Expect(inNamespace.stderr.String()).To(BeEmpty())
	})
}
