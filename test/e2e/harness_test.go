//go:build e2e

package e2e

import (
	"os/exec"
	"sync/atomic"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/test/harness"
)

// The harness (test/harness) is shared with the fault tests; these are the
// e2e's names for it, so that the steps read as they did before it moved.

// cluster is the local control plane with an admin kubeconfig and one for
// the manager that acts as its ServiceAccount: harness.Cluster, with the
// fields the steps set and read under their own names, handed to the
// harness on each start and read back from it after.
type cluster struct {
	*harness.Cluster
	adminKubeconfig   string
	managerKubeconfig string
	proxyAddr, health string
	api, metrics      string
	metricsToken      string
	webhook           string
	// refuseURLs starts the manager without --allow-url-upstreams.
	refuseURLs bool
	// leaderElect starts the manager with --leader-elect.
	leaderElect   bool
	managerLog    *syncBuffer
	managerExited chan struct{}
}

type syncBuffer = harness.SyncBuffer

func startCluster(t *testing.T) *cluster {
	h := harness.StartCluster(t)
	return &cluster{Cluster: h, adminKubeconfig: h.AdminKubeconfig, managerKubeconfig: h.ManagerKubeconfig}
}

func (c *cluster) startManager(t *testing.T) {
	c.Webhook, c.RefuseURLs, c.LeaderElect = c.webhook, c.refuseURLs, c.leaderElect
	c.StartManager(t)
	c.proxyAddr, c.health, c.api, c.metrics = c.ProxyAddr, c.Health, c.API, c.Metrics
	c.managerLog, c.managerExited = c.ManagerLog, c.ManagerExited
}

func (c *cluster) stopManager(g Gomega) { c.StopManager(g) }

func (c *cluster) kubectlErr(args ...string) (string, error) { return c.KubectlErr(args...) }

func (c *cluster) kubectlStdin(stdin string, args ...string) (string, error) {
	return c.KubectlStdin(stdin, args...)
}

// kubectl runs kubectl as the cluster admin and fails the test on error.
func (c *cluster) kubectl(g Gomega, args ...string) string { return c.KubectlOffset(1, g, args...) }

// kubectlQuiet returns kubectl's output, errors included, for polling.
func (c *cluster) kubectlQuiet(args ...string) string { return c.KubectlQuiet(args...) }

func (c *cluster) kubectlApply(t *testing.T, manifest string) {
	out, err := c.KubectlStdin(manifest, "apply", "-f", "-")
	NewWithT(t).ExpectWithOffset(1, err).NotTo(HaveOccurred(), out)
}

// upstream is an HTTP server that fails on command: harness.Upstream, its
// counters under the e2e's names.
type upstream struct {
	*harness.Upstream
	failing  *atomic.Bool
	hits     *atomic.Int64
	lastPath *atomic.Value
}

func newUpstream(t *testing.T) *upstream {
	u := harness.NewUpstream(t)
	return &upstream{Upstream: u, failing: &u.Failing, hits: &u.Hits, lastPath: &u.LastPath}
}

// hookReceiver records the JSON documents POSTed to it.
type hookReceiver struct{ *harness.HookReceiver }

func newHookReceiver(t *testing.T) *hookReceiver { return &hookReceiver{harness.NewHookReceiver(t)} }

func (h *hookReceiver) received() []map[string]any { return h.Received() }

func freeAddr(g Gomega) string { return harness.FreeAddr(g) }

func childProcess(g Gomega, name string) int { return harness.ChildProcess(g, name) }

// Replica names, as POD_NAME gives them in a cluster.
const (
	primaryReplica = harness.PrimaryReplica
	secondReplica  = harness.SecondReplica
)

// replica is a second bin/manager process next to the cluster's own.
type replica struct {
	*harness.Replica
	cmd       *exec.Cmd
	exited    chan struct{}
	proxyAddr string
}

// startReplica runs another manager with leader election, as a second pod would.
func (c *cluster) startReplica(t *testing.T, name string) *replica {
	r := c.StartReplica(t, name)
	return &replica{Replica: r, cmd: r.Cmd, exited: r.Exited, proxyAddr: r.ProxyAddr}
}
