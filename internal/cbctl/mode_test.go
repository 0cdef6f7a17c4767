package cbctl_test

import (
	"testing"

	. "github.com/onsi/gomega"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/cbctl"
)

func TestMode(t *testing.T) {
	ns := newNamespace(t)
	createBreaker(t, ns, "order-api", cbv1.CircuitBreakerSpec{})

	t.Run("prints the mode", func(t *testing.T) {
		g := NewWithT(t)
		out := kubectlCB("mode", "order-api", "-n", ns)
		g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
		g.Expect(out.stdout).To(Equal("Enforce\n"))
	})

	previous := cbv1.ModeEnforce
	for _, mode := range []string{cbv1.ModeForcedOpen, cbv1.ModeObserve, cbv1.ModeDisabled, cbv1.ModeEnforce} {
		t.Run("sets "+mode, func(t *testing.T) {
			g := NewWithT(t)
			out := kubectlCB("mode", "order-api", mode, "-n", ns)
			g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
			g.Expect(out.stdout).To(Equal("circuitbreaker/order-api mode set to " + mode + " (was " + previous + ")\n"))
			g.Expect(getBreaker(g, ns, "order-api").Spec.Mode).To(Equal(mode))
			g.Expect(kubectlCB("mode", "order-api", "-n", ns).stdout).To(Equal(mode + "\n"))
			previous = mode
		})
	}

	t.Run("refuses what is not a mode, and changes nothing", func(t *testing.T) {
		for _, bad := range []struct{ mode, want string }{
			{"Off", `error: unknown mode "Off": use one of Enforce, Observe, ForcedOpen, Disabled` + "\n"},
			{"forcedopen", `error: unknown mode "forcedopen" (did you mean ForcedOpen?): use one of Enforce, Observe, ForcedOpen, Disabled` + "\n"},
			{"", `error: unknown mode "": use one of Enforce, Observe, ForcedOpen, Disabled` + "\n"},
		} {
			g := NewWithT(t)
			out := kubectlCB("mode", "order-api", bad.mode, "-n", ns)
			g.Expect(out.code).To(Equal(cbctl.ExitError), bad.mode)
			g.Expect(out.stderr).To(Equal(bad.want))
			g.Expect(out.stdout).To(BeEmpty())
			g.Expect(getBreaker(g, ns, "order-api").Spec.Mode).To(Equal(cbv1.ModeEnforce))
		}
	})

	t.Run("an unknown breaker exits 1", func(t *testing.T) {
		for _, args := range [][]string{{"mode", "nope"}, {"mode", "nope", cbv1.ModeObserve}} {
			g := NewWithT(t)
			out := kubectlCB(append(args, "-n", ns)...)
			g.Expect(out.code).To(Equal(cbctl.ExitError), "%v", args)
			g.Expect(out.stderr).To(Equal(`error: no CircuitBreaker "nope" in namespace "` + ns + `"` + "\n"))
		}
	})
}
