package cbctl_test

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/cbctl"
)

// handleResets plays the manager for one breaker until the test ends:
// each new value of the reset annotation closes it and is recorded in
// status.lastHandledReset, as the controller does.
func handleResets(t *testing.T, namespace, name string) {
	ctx, cancel := context.WithCancel(context.Background())
	w, err := k8sClient.Watch(ctx, &cbv1.CircuitBreakerList{}, client.InNamespace(namespace),
		client.MatchingFields{"metadata.name": name})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for event := range w.ResultChan() {
			cb, ok := event.Object.(*cbv1.CircuitBreaker)
			if !ok {
				continue
			}
			value := cb.Annotations[cbv1.ResetAnnotation]
			if value == "" || value == cb.Status.LastHandledReset {
				continue
			}
			cb.Status.LastHandledReset = value
			cb.Status.State = cbv1.StateClosed
			cb.Status.FailureCount = 0
			cb.Status.OpenUntil = nil
			if err := k8sClient.Status().Update(ctx, cb); err != nil && ctx.Err() == nil {
				t.Errorf("writing the handled reset: %v", err)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		w.Stop()
		<-done
	})
}

func TestReset(t *testing.T) {
	ns := newNamespace(t)
	open := func(name string) {
		createBreaker(t, ns, name, cbv1.CircuitBreakerSpec{})
		writeStatus(t, ns, name, func(s *cbv1.CircuitBreakerStatus) {
			s.State = cbv1.StateOpen
			s.FailureCount = 5
			s.LastOpenReason = "ConsecutiveFailures"
			s.LastHandledReset = "earlier"
		})
	}

	t.Run("waits until the manager has handled the new value, then prints the state", func(t *testing.T) {
		g := NewWithT(t)
		open("handled")
		handleResets(t, ns, "handled")
		out := kubectlCB("reset", "handled", "-n", ns)
		g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
		cb := getBreaker(g, ns, "handled")
		token := cb.Annotations[cbv1.ResetAnnotation]
		g.Expect(token).To(MatchRegexp(`^[0-9]{19}$`), "a fresh value, as date +%s%N gives")
		g.Expect(cb.Status.LastHandledReset).To(Equal(token))
		g.Expect(out.stdout).To(MatchRegexp(`^circuitbreaker/handled reset \(circuitbreaker\.io/reset=` + token + `\)\n` +
			`NAME\s+STATE\s+MODE[^\n]*\nhandled\s+Closed\s+Enforce\s+ConsecutiveFailures\s+0/5\s`))

		again := kubectlCB("reset", "handled", "-n", ns)
		g.Expect(again.code).To(Equal(cbctl.ExitOK), again.stderr)
		g.Expect(getBreaker(g, ns, "handled").Annotations[cbv1.ResetAnnotation]).NotTo(Equal(token), "each reset is a new value")
	})

	t.Run("with nobody handling it: exit 124 and a message saying what did not happen", func(t *testing.T) {
		g := NewWithT(t)
		open("unhandled")
		out := kubectlCB("reset", "unhandled", "-n", ns, "--timeout", "1s")
		g.Expect(out.code).To(Equal(cbctl.ExitTimedOut), out.stdout)
		token := getBreaker(g, ns, "unhandled").Annotations[cbv1.ResetAnnotation]
		g.Expect(token).NotTo(BeEmpty(), "the annotation was set")
		g.Expect(out.stderr).To(Equal("error: the reset annotation was set (circuitbreaker.io/reset=" + token +
			`) but status.lastHandledReset did not reach it within 1s (it is still "earlier"): is the manager running?` + "\n"))
		g.Expect(out.stdout).To(BeEmpty())
	})

	t.Run("a breaker the manager refuses: the timeout names the refusal", func(t *testing.T) {
		g := NewWithT(t)
		open("refused")
		writeStatus(t, ns, "refused", func(s *cbv1.CircuitBreakerStatus) {
			meta.SetStatusCondition(&s.Conditions, metav1.Condition{Type: cbv1.ConditionReady, Status: metav1.ConditionFalse,
				Reason: "UpstreamNotAllowed", Message: "spec.upstream.url is refused: the manager runs without --allow-url-upstreams"})
		})
		out := kubectlCB("reset", "refused", "-n", ns, "--timeout", "1s")
		g.Expect(out.code).To(Equal(cbctl.ExitTimedOut))
		g.Expect(out.stderr).To(SatisfyAll(
			ContainSubstring("but status.lastHandledReset did not reach it within 1s"),
			ContainSubstring("the breaker is not Ready (UpstreamNotAllowed: spec.upstream.url is refused: the manager runs without --allow-url-upstreams)"),
		))
	})

	t.Run("--wait=false sets the annotation and returns at once", func(t *testing.T) {
		g := NewWithT(t)
		open("nowait")
		out := kubectlCB("reset", "nowait", "-n", ns, "--wait=false")
		g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
		cb := getBreaker(g, ns, "nowait")
		token := cb.Annotations[cbv1.ResetAnnotation]
		g.Expect(token).NotTo(BeEmpty())
		g.Expect(cb.Status.LastHandledReset).To(Equal("earlier"), "nobody handled it, and the command did not wait")
		g.Expect(out.stdout).To(Equal("circuitbreaker/nowait reset requested (circuitbreaker.io/reset=" + token + "); not waiting for the manager\n"))
	})

	t.Run("errors exit 1", func(t *testing.T) {
		for _, bad := range []struct {
			args []string
			want string
		}{
			{[]string{"reset", "nope", "-n", ns}, `no CircuitBreaker "nope" in namespace "` + ns + `"`},
			{[]string{"reset", "-n", ns}, "accepts 1 arg(s), received 0"},
			{[]string{"reset", "handled", "-n", ns, "--timeout", "0s"}, "--timeout must be greater than 0"},
			// The caller's RBAC is all it has: impersonating someone without it is refused.
			{[]string{"reset", "handled", "-n", ns, "--as", "system:serviceaccount:" + ns + ":nobody"},
				`circuitbreakers.circuitbreaker.io "handled" is forbidden: User "system:serviceaccount:` + ns + `:nobody" cannot get resource`},
		} {
			g := NewWithT(t)
			out := kubectlCB(bad.args...)
			g.Expect(out.code).To(Equal(cbctl.ExitError), "%v", bad.args)
			g.Expect(out.stderr).To(ContainSubstring(bad.want), "%v", bad.args)
		}
	})
}
