//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// pluginRun is what one `kubectl cb` printed, and its exit code.
type pluginRun struct {
	code           int
	stdout, stderr string
}

// TestPlugin drives `kubectl cb`, installed as the README says (bin/kubectl-cb
// copied onto PATH, found by kubectl itself), against the real manager.
func TestPlugin(t *testing.T) {
	c := startCluster(t)
	up := newUpstream(t)
	step := func(name string, fn func(g Gomega)) {
		if !t.Run(name, func(t *testing.T) { fn(NewWithT(t)) }) {
			t.FailNow()
		}
	}
	onPath := t.TempDir()
	plugin, err := os.ReadFile(filepath.Join(root, "bin", "kubectl-cb"))
	NewWithT(t).Expect(err).NotTo(HaveOccurred(), "make build writes bin/kubectl-cb")
	NewWithT(t).Expect(os.WriteFile(filepath.Join(onPath, "kubectl-cb"), plugin, 0o755)).To(Succeed())
	env := append(os.Environ(), "KUBECONFIG="+c.adminKubeconfig, "PATH="+onPath+string(os.PathListSeparator)+os.Getenv("PATH"))
	cb := func(g Gomega, args ...string) pluginRun {
		cmd := exec.Command("kubectl", append([]string{"cb"}, args...)...)
		cmd.Env = env
		var stdout, stderr syncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		run := pluginRun{stdout: stdout.String(), stderr: stderr.String()}
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			run.code = exit.ExitCode()
		} else {
			g.ExpectWithOffset(1, err).NotTo(HaveOccurred())
		}
		return run
	}

	step("the manager runs with the installer's RBAC", func(g Gomega) {
		c.kubectl(g, "apply", "-k", filepath.Join(root, "config", "crd"))
		c.kubectl(g, "wait", "--for", "condition=established", "crd/circuitbreakers.circuitbreaker.io", "--timeout=30s")
		c.kubectl(g, "create", "namespace", operatorNamespace)
		c.kubectl(g, "apply", "-f", filepath.Join(root, "dist", "install.yaml"))
		c.startManager(t)
	})

	c.kubectlApply(t, fmt.Sprintf(`apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: plugin-api, namespace: default}
spec: {upstream: {url: %q}, failureThreshold: 3, recoveryTimeout: 1h}
`, up.URL))
	route := "http://" + c.proxyAddr + "/default/plugin-api/x"

	// watch runs from here to the end, seeing every transition below.
	watch := exec.Command("kubectl", "cb", "watch")
	watch.Env = env
	watchOut, watchErr := &syncBuffer{}, &syncBuffer{}
	watch.Stdout, watch.Stderr = watchOut, watchErr
	NewWithT(t).Expect(watch.Start()).To(Succeed())
	watchExited := make(chan struct{})
	go func() { _ = watch.Wait(); close(watchExited) }()
	t.Cleanup(func() {
		_ = watch.Process.Kill()
		<-watchExited
	})

	step("get shows the breaker the manager serves", func(g Gomega) {
		g.Eventually(func() int { return httpGet(g, route) }, 10*time.Second).Should(Equal(200))
		g.Eventually(func() string { return cb(g, "get", "plugin-api").stdout }).Should(MatchRegexp(
			`(?m)^NAME\s+STATE\s+MODE\s+WHY\s+FAILURES\s+PROBING IN\s+REPLICAS\s+ENDPOINTS\s+UPSTREAM\n` +
				`plugin-api\s+Closed\s+Enforce\s+-\s+0/3\s+-\s+\S+\s+-\s+` + strings.ReplaceAll(up.URL, ".", `\.`) + `/?$`))
		g.Eventually(watchOut.String).Should(MatchRegexp(`^TIME\s+NAME\s+FROM\s+TO\s+REASON\n$`), "watch has listed the breakers")
	})

	step("a trip shows in get and as a line of watch", func(g Gomega) {
		up.failing.Store(true)
		for range 3 {
			g.Expect(httpGet(g, route)).To(Equal(500))
		}
		up.failing.Store(false)
		g.Eventually(func() string { return cb(g, "get", "plugin-api").stdout }).Should(
			MatchRegexp(`(?m)^plugin-api\s+Open\s+Enforce\s+ConsecutiveFailures\s+3/3\s+(59m|60m)\s`))
		g.Eventually(watchOut.String).Should(MatchRegexp(`(?m)^\S+\s+plugin-api\s+Closed\s+Open\s+3 consecutive failures, last: 500$`))
		out := cb(g, "get", "plugin-api", "-o", "json")
		g.Expect(out.code).To(Equal(0), out.stderr)
		g.Expect(out.stdout).To(ContainSubstring(`"lastOpenReason": "ConsecutiveFailures"`))
	})

	step("reset waits for the manager and prints the state it reached", func(g Gomega) {
		out := cb(g, "reset", "plugin-api")
		g.Expect(out.code).To(Equal(0), out.stderr)
		g.Expect(out.stdout).To(MatchRegexp(`^circuitbreaker/plugin-api reset \(circuitbreaker\.io/reset=[0-9]+\)\nNAME[^\n]*\nplugin-api\s+Closed\s+Enforce\s`))
		g.Expect(httpGet(g, route)).To(Equal(200), "the proxy serves again")
		g.Eventually(watchOut.String).Should(MatchRegexp(
			`(?m)^\S+\s+plugin-api\s+Open\s+Closed\s+breaker reset to Closed by annotation circuitbreaker\.io/reset=[0-9]+$`))
	})

	step("history shows the transitions with the manager's Events", func(g Gomega) {
		var history string
		g.Eventually(func() string {
			history = cb(g, "history", "plugin-api").stdout
			return history
		}).Should(SatisfyAll(
			MatchRegexp(`(?m)^TIME\s+SOURCE\s+FROM\s+TO\s+REASON$`),
			MatchRegexp(`(?m)^\S+\s+status\s+Closed\s+Open\s+3 consecutive failures, last: 500 \[ConsecutiveFailures\]$`),
			MatchRegexp(`(?m)^\S+\s+event\s+-\s+Open\s+Opened: 3 consecutive failures, last: 500$`),
			MatchRegexp(`(?m)^\S+\s+status\s+Open\s+Closed\s+breaker reset to Closed by annotation`),
			MatchRegexp(`(?m)^\S+\s+event\s+-\s+Closed\s+Reset: breaker reset to Closed by annotation`),
		))
		t.Logf("kubectl cb history plugin-api:\n%s", history)
	})

	step("mode switches the proxy; a bad mode is refused", func(g Gomega) {
		out := cb(g, "mode", "plugin-api", "ForcedOpen")
		g.Expect(out.code).To(Equal(0), out.stderr)
		g.Expect(out.stdout).To(Equal("circuitbreaker/plugin-api mode set to ForcedOpen (was Enforce)\n"))
		g.Eventually(func() int { return httpGet(g, route) }, 5*time.Second, 100*time.Millisecond).Should(Equal(503), "ForcedOpen rejects every call")
		g.Expect(cb(g, "mode", "plugin-api").stdout).To(Equal("ForcedOpen\n"))
		g.Eventually(func() string { return cb(g, "get", "plugin-api").stdout }).Should(MatchRegexp(`(?m)^plugin-api\s+\S+\s+ForcedOpen\s`))

		bad := cb(g, "mode", "plugin-api", "Off")
		g.Expect(bad.code).To(Equal(1))
		g.Expect(bad.stderr).To(ContainSubstring(`unknown mode "Off": use one of Enforce, Observe, ForcedOpen, Disabled`))

		g.Expect(cb(g, "mode", "plugin-api", "Enforce").code).To(Equal(0))
		g.Eventually(func() int { return httpGet(g, route) }, 5*time.Second, 100*time.Millisecond).Should(Equal(200))
	})

	step("an unknown breaker exits 1", func(g Gomega) {
		for _, args := range [][]string{{"get", "nope"}, {"reset", "nope"}, {"history", "nope"}, {"mode", "nope"}} {
			out := cb(g, args...)
			g.Expect(out.code).To(Equal(1), "%v", args)
			g.Expect(out.stderr).To(ContainSubstring(`no CircuitBreaker "nope" in namespace "default"`), "%v", args)
		}
	})

	step("with the manager stopped, reset exits 124 saying so", func(g Gomega) {
		c.stopManager(g)
		out := cb(g, "reset", "plugin-api", "--timeout", "2s")
		g.Expect(out.code).To(Equal(124), out.stdout)
		g.Expect(out.stderr).To(MatchRegexp(`^error: the reset annotation was set \(circuitbreaker\.io/reset=[0-9]+\) ` +
			`but status\.lastHandledReset did not reach it within 2s \(it is still "[0-9]+"\): is the manager running\?\n$`))
		c.startManager(t)
		g.Eventually(func() bool {
			handled, wanted, _ := strings.Cut(c.kubectlQuiet("get", "cb", "plugin-api", "-o",
				`jsonpath={.status.lastHandledReset}={.metadata.annotations.circuitbreaker\.io/reset}`), "=")
			return wanted != "" && handled == wanted
		}, 20*time.Second).Should(BeTrue(), "the restarted manager handles the reset left pending")
	})

	step("watch ends with exit code 0 when interrupted", func(g Gomega) {
		g.Expect(watch.Process.Signal(syscall.SIGINT)).To(Succeed())
		g.Eventually(watchExited).Should(BeClosed())
		g.Expect(watch.ProcessState.ExitCode()).To(Equal(0), watchErr.String())
		t.Logf("kubectl cb watch:\n%s", watchOut)
	})
}
