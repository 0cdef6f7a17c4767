//go:build faults

// Package faults breaks what the manager depends on while traffic runs, and
// checks what callers and the status see: the real bin/manager, the local
// control plane, loopback only. Every loop is bounded in count and time;
// what each case measured is printed with a "fault:" line.
package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/test/harness"
)

const (
	// loadRate is the calls a second each load loop sends.
	loadRate = 200
	// loadLimit bounds a load loop that is not itself the fault's length.
	loadLimit = 10 * time.Second
	// memberLeaseDuration is internal/leader's MemberLeaseDuration: how
	// long a replica's membership Lease lasts.
	memberLeaseDuration = 15 * time.Second
)

func init() {
	// Waits that are not themselves the subject of a case get room for a
	// loaded CI machine.
	SetDefaultEventuallyTimeout(20 * time.Second)
}

func TestFaults(t *testing.T) {
	g := NewWithT(t)
	c := harness.StartCluster(t)
	c.Kubectl(g, "apply", "-k", filepath.Join(harness.Root, "config", "crd"))
	c.Kubectl(g, "wait", "--for", "condition=established", "crd/circuitbreakers.circuitbreaker.io", "--timeout=30s")
	c.Kubectl(g, "create", "namespace", harness.OperatorNamespace)
	// The RBAC the manager runs with, and the metrics-reader ClusterRole.
	c.Kubectl(g, "apply", "-f", filepath.Join(harness.Root, "dist", "install.yaml"))
	c.LeaderElect = true
	up := harness.NewUpstream(t)
	f := &faults{t: t, c: c, up: up}

	for _, tc := range []struct {
		name string
		run  func(t *testing.T, g Gomega)
	}{
		{"graceful restart under load", f.gracefulRestart},
		{"SIGKILL of one of two replicas under load", f.killReplica},
		{"API server SIGKILLed and restarted on the same etcd", f.apiServerKilled},
		{"etcd stopped for 30 s", f.etcdStopped},
		{"churn of 1,000 breakers beside a busy one", f.churn},
		{"a webhook receiver that hangs", f.hangingWebhook},
	} {
		if !t.Run(tc.name, func(t *testing.T) { tc.run(t, NewWithT(t)) }) {
			t.FailNow()
		}
	}
}

type faults struct {
	// t is the whole suite's test: what must outlive a case is cleaned up with it.
	t  *testing.T
	c  *harness.Cluster
	up *harness.Upstream
}

// manager makes sure the cluster's manager (replica A) runs.
func (f *faults) manager(t *testing.T) {
	if f.c.Manager == nil {
		f.c.StartManager(t)
	}
}

// exited waits for the cluster's manager to exit after a signal sent to it.
func (f *faults) exited(g Gomega) {
	g.Eventually(f.c.ManagerExited, 40*time.Second).Should(BeClosed())
	f.c.Manager = nil
}

// breaker applies a URL breaker in default and waits until route answers 200.
func (f *faults) breaker(t *testing.T, g Gomega, name, upstreamURL, spec string, proxies ...string) {
	f.c.KubectlApply(t, fmt.Sprintf(`apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: %s, namespace: default}
spec: {upstream: {url: %q}, %s}
`, name, upstreamURL, spec))
	for _, proxy := range proxies {
		g.Eventually(func() int { return get(route(proxy, name)).status }, 20*time.Second, 50*time.Millisecond).Should(Equal(200), "%s through %s", name, proxy)
	}
}

func (f *faults) jsonpath(name, path string) string {
	return f.c.KubectlQuiet("get", "cb", name, "-o", "jsonpath="+path)
}

func route(proxy, name string) string { return "http://" + proxy + "/default/" + name + "/x" }

type answer struct {
	status int
	header http.Header
	body   string
}

var client = &http.Client{Timeout: 5 * time.Second}

func get(url string) answer {
	resp, err := client.Get(url)
	if err != nil {
		return answer{}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

// waitCalls waits until a load has finished n calls.
func waitCalls(g Gomega, r *loadResult, n int64) {
	g.Eventually(r.done.Load, 20*time.Second, 10*time.Millisecond).Should(BeNumerically(">=", n))
}

// 1. SIGTERM to replica A under load: every call it accepted is answered,
// its keep-alive callers are told Connection: close while it drains, and B
// serves on.
func (f *faults) gracefulRestart(t *testing.T, g Gomega) {
	f.manager(t)
	b := f.c.StartReplica(t, harness.SecondReplica)
	f.breaker(t, g, "graceful", f.up.URL, "failureThreshold: 5", f.c.ProxyAddr, b.ProxyAddr)

	ctx := t.Context()
	atA, waitA := startLoad(ctx, route(f.c.ProxyAddr, "graceful"), loadRate, loadLimit)
	_, waitB := startLoad(ctx, route(b.ProxyAddr, "graceful"), loadRate, loadLimit)
	waitCalls(g, atA, loadRate*3)
	signalled := time.Now()
	g.Expect(f.c.Manager.Process.Signal(syscall.SIGTERM)).To(Succeed())
	// The first answer of /readyz that is not 200: 500 (not ready) while
	// the manager drains, 0 once it is gone.
	readiness := 200
	var notReady time.Duration
	for range 500 {
		if readiness = get("http://" + f.c.Health + "/readyz").status; readiness != 200 {
			notReady = time.Since(signalled)
			break
		}
		<-time.After(20 * time.Millisecond)
	}
	f.exited(g)
	drained := time.Since(signalled)
	a, bRes := waitA(), waitB()

	// A connection the kernel completed as the listener closed, still in
	// its accept queue, is reset or closed unread: TCP gives a closing
	// listener no way to refuse it cleanly. Such calls were never accepted
	// by the manager: a fresh connection failing within acceptQueueWindow
	// of the first refusal is counted apart, and printed.
	const acceptQueueWindow = 250 * time.Millisecond
	lost, resets := 0, 0
	for _, fail := range a.failures {
		if !fail.reused && !a.firstRefused.IsZero() && fail.at.Sub(a.firstRefused).Abs() < acceptQueueWindow {
			lost++
		} else {
			resets++
		}
	}
	t.Logf("fault: graceful restart: replica A: %d calls, %d resets, %d proxy 5xx, %d told Connection: close, %d refused after its listener closed "+
		"(%d more lost in its accept queue as it closed), /readyz %d %s after SIGTERM, drain %s (SIGTERM to exit)",
		a.calls(), resets, a.fivexx(), a.toldClose, a.refused, lost, readiness, notReady.Round(time.Millisecond), drained.Round(10*time.Millisecond))
	t.Logf("fault: graceful restart: replica A: %s; errors %q", a, a.errs)
	t.Logf("fault: graceful restart: replica B: %s", bRes)
	g.Expect(readiness).To(Equal(http.StatusInternalServerError), "/readyz fails during the drain, while the manager answers")
	g.Expect(resets).To(BeZero(), "every call A accepted was answered: %q", a.errs)
	g.Expect(lost).To(BeNumerically("<=", 3), "the accept queue at the close holds few")
	g.Expect(a.fivexx()).To(BeZero(), "the upstream is healthy: no 5xx is the proxy's")
	g.Expect(a.toldClose).To(BeNumerically(">", 0), "keep-alive callers are told Connection: close during the drain")
	g.Expect(bRes.statuses).To(Equal(map[int]int{200: bRes.calls()}), "B served every call")
	g.Expect(bRes.failed + bRes.refused).To(BeZero())
}

// 2. SIGKILL of replica A under load: B serves on without a gap, A's
// status.replicas entries go within the membership Lease, nothing else in
// the status changes.
func (f *faults) killReplica(t *testing.T, g Gomega) {
	f.manager(t)
	b := f.c.StartReplica(t, harness.SecondReplica)
	f.breaker(t, g, "killed", f.up.URL, "failureThreshold: 3, recoveryTimeout: 1h", f.c.ProxyAddr, b.ProxyAddr)
	// A history and a handled reset to keep: three failures open it, the
	// annotation closes it.
	f.up.Failing.Store(true)
	for range 3 {
		g.Expect(get(route(f.c.ProxyAddr, "killed")).status).To(Equal(500))
	}
	f.up.Failing.Store(false)
	g.Eventually(func() string { return f.jsonpath("killed", "{.status.state}") }).Should(Equal("Open"))
	f.c.Kubectl(g, "annotate", "cb", "killed", "circuitbreaker.io/reset=before-kill", "--overwrite")
	g.Eventually(func() string { return f.jsonpath("killed", "{.status.state}/{.status.lastHandledReset}") }).Should(Equal("Closed/before-kill"))
	for _, proxy := range []string{f.c.ProxyAddr, b.ProxyAddr} {
		g.Eventually(func() int { return get(route(proxy, "killed")).status }).Should(Equal(200))
	}
	g.Eventually(func() []string { return strings.Fields(f.jsonpath("killed", "{.status.replicas[*].name}")) }).
		Should(ConsistOf(harness.PrimaryReplica, harness.SecondReplica), "both replicas wrote their entry")
	keep := "{.status.state} {.status.lastHandledReset} {.status.history}"
	before := f.jsonpath("killed", keep)

	atB, waitB := startLoad(t.Context(), route(b.ProxyAddr, "killed"), loadRate, loadLimit)
	waitCalls(g, atB, loadRate*2)
	g.Expect(f.c.Manager.Process.Signal(syscall.SIGKILL)).To(Succeed())
	killed := time.Now()
	f.exited(g)
	g.Eventually(func() string { return f.jsonpath("killed", "{.status.replicas[*].name}") }, memberLeaseDuration+45*time.Second, 200*time.Millisecond).
		Should(Equal(harness.SecondReplica), "A's entry expires with its membership Lease")
	gone := time.Since(killed)
	res := waitB()
	after := f.jsonpath("killed", keep)
	t.Logf("fault: SIGKILL of one of two replicas: replica B: %s; A's status.replicas entry gone %s after the kill (membership Lease %s); status kept: %v",
		res, gone.Round(100*time.Millisecond), memberLeaseDuration, before == after)
	g.Expect(res.statuses).To(Equal(map[int]int{200: res.calls()}), "B served every call")
	g.Expect(res.failed + res.refused).To(BeZero())
	g.Expect(after).To(Equal(before), "state, lastHandledReset and history are kept:\nbefore %s\nafter  %s", before, after)
}

// controlPlaneFault breaks the control plane with stop while a load runs
// on one breaker and another is tripped, then mends it with restore:
// every call is served, the tripped breaker's status reads Open and a
// spec change made after the repair reaches the proxy.
func (f *faults) controlPlaneFault(t *testing.T, g Gomega, name string, outage time.Duration, stop func(), restore func()) {
	f.manager(t)
	steady, tripped, watched := name+"-steady", name+"-tripped", name+"-watched"
	failing := harness.NewUpstream(t)
	probe := harness.NewUpstream(t)
	f.breaker(t, g, steady, f.up.URL, "failureThreshold: 5", f.c.ProxyAddr)
	f.breaker(t, g, tripped, failing.URL, "failureThreshold: 3, recoveryTimeout: 1h", f.c.ProxyAddr)
	f.breaker(t, g, watched, probe.URL+"/before", "failureThreshold: 5", f.c.ProxyAddr)
	g.Eventually(func() string { return f.jsonpath(tripped, "{.status.state}") }).Should(Equal("Closed"))

	// The load covers the outage and the repair, bounded.
	limit := outage + 25*time.Second
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	atSteady, waitSteady := startLoad(ctx, route(f.c.ProxyAddr, steady), loadRate/2, limit)
	waitCalls(g, atSteady, loadRate/2)
	broken := time.Now()
	stop()
	failing.Failing.Store(true)
	for range 3 {
		g.Expect(get(route(f.c.ProxyAddr, tripped)).status).To(Equal(500))
	}
	g.Expect(get(route(f.c.ProxyAddr, tripped)).header.Get("X-Circuit-Breaker-State")).To(Equal("open"), "tripped while the control plane is away")
	if rest := outage - time.Since(broken); rest > 0 {
		<-time.After(rest) // the fault's length, not a wait for a fact
	}
	restore()
	repaired := time.Now()
	g.Eventually(func() string { return f.c.KubectlQuiet("get", "--raw", "/readyz") }, 60*time.Second, 200*time.Millisecond).Should(Equal("ok"))
	apiBack := time.Since(repaired)
	g.Eventually(func() string { return f.jsonpath(tripped, "{.status.state}") }, 60*time.Second, 200*time.Millisecond).Should(Equal("Open"))
	statusBack := time.Since(repaired)
	f.c.Kubectl(g, "patch", "cb", watched, "--type=merge", "-p", fmt.Sprintf(`{"spec":{"upstream":{"url":%q}}}`, probe.URL+"/after"))
	g.Eventually(func() any { get(route(f.c.ProxyAddr, watched)); return probe.LastPath.Load() }, 60*time.Second, 100*time.Millisecond).
		Should(Equal("/after/x"), "the watch resumed: a spec change after the repair reaches the proxy")
	watchBack := time.Since(repaired)
	g.Eventually(func() string { return f.jsonpath(steady, "{.status.state}") }).Should(Equal("Closed"))
	cancel()
	res := waitSteady()
	t.Logf("fault: %s: untouched breaker: %s; API server ready %s after the repair, tripped breaker's status Open after %s, a spec change served after %s",
		name, res, apiBack.Round(100*time.Millisecond), statusBack.Round(100*time.Millisecond), watchBack.Round(100*time.Millisecond))
	g.Expect(res.statuses).To(Equal(map[int]int{200: res.calls()}), "the data plane served every call: %q", res.errs)
	g.Expect(f.c.ManagerExited).NotTo(BeClosed(), "the manager kept running")
}

// 3. The API server is SIGKILLed and a new one started with the same
// arguments, on the same port, certificates and etcd.
//
// Not through envtest: its APIServer.Stop then Start makes new serving and
// client certificates (the CertDir is a fresh temporary directory, and the
// authenticator a new CA), so neither kubeconfig would work any more. The
// new process runs the killed one's command line, read from /proc, and is
// stopped when the test ends.
func (f *faults) apiServerKilled(t *testing.T, g Gomega) {
	var pid int
	var cmdline []string
	f.controlPlaneFault(t, g, "apiserver", 0, func() {
		pid = harness.ChildProcess(g, "kube-apiserver")
		raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		g.Expect(err).NotTo(HaveOccurred())
		cmdline = strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		g.Expect(syscall.Kill(pid, syscall.SIGKILL)).To(Succeed())
		// envtest's own Wait reaps it.
		g.Eventually(func() error { _, err := os.Stat("/proc/" + strconv.Itoa(pid)); return err }, 10*time.Second, 20*time.Millisecond).
			Should(MatchError(os.ErrNotExist))
	}, func() {
		log := &harness.SyncBuffer{}
		apiserver := exec.Command(cmdline[0], cmdline[1:]...)
		apiserver.Stdout, apiserver.Stderr = log, log
		g.Expect(apiserver.Start()).To(Succeed())
		exited := make(chan struct{})
		go func() { _ = apiserver.Wait(); close(exited) }()
		// It serves the cases after this one; the harness stops envtest
		// when the suite ends, after this.
		f.t.Cleanup(func() {
			_ = apiserver.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(20 * time.Second):
				_ = apiserver.Process.Kill()
				<-exited
			}
			if t.Failed() {
				fmt.Fprintf(os.Stderr, "\n===== restarted kube-apiserver log =====\n%s\n", log)
			}
		})
	})
}

// 4. etcd stopped (SIGSTOP) for 30 s, then continued.
func (f *faults) etcdStopped(t *testing.T, g Gomega) {
	var pid int
	f.controlPlaneFault(t, g, "etcd", 30*time.Second, func() {
		pid = harness.ChildProcess(g, "etcd")
		g.Expect(syscall.Kill(pid, syscall.SIGSTOP)).To(Succeed())
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	}, func() {
		g.Expect(syscall.Kill(pid, syscall.SIGCONT)).To(Succeed())
	})
}
