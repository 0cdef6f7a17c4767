// Package harness runs the real bin/manager against a local control plane
// (internal/controlplane) and drives it with kubectl and HTTP: what the
// end-to-end tests (test/e2e) and the fault tests (test/faults) share.
//
// It is an ordinary package with no build tag, so that both test packages
// import it; nothing outside test/ does.
package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/onsi/gomega"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/circuitbreaker-io/operator/internal/controlplane"
)

const (
	// OperatorNamespace is the installer's namespace, where the Leases live.
	OperatorNamespace = "circuit-breaker-operator-system"
	// ServiceAccount is the manager's identity, as dist/install.yaml binds it.
	ServiceAccount = "system:serviceaccount:" + OperatorNamespace + ":circuit-breaker-operator-controller-manager"
)

// Replica names, as POD_NAME gives them in a cluster.
const (
	PrimaryReplica = "manager-a"
	SecondReplica  = "manager-b"
)

// Root is the root of the source tree, where bin/manager and dist/ are.
var Root = controlplane.RepoRoot()

// Cluster is the local control plane with an admin kubeconfig and one for
// the manager that acts as its ServiceAccount.
type Cluster struct {
	Env               *envtest.Environment
	AdminKubeconfig   string
	ManagerKubeconfig string
	// The manager's addresses, chosen on its first start and kept by restarts.
	ProxyAddr, Health string
	API, Metrics      string
	// Webhook is the manager's --notify-webhook ("" for none).
	Webhook string
	Manager *exec.Cmd
	// RefuseURLs starts the manager without --allow-url-upstreams.
	RefuseURLs bool
	// LeaderElect starts the manager with --leader-elect.
	LeaderElect   bool
	ManagerLog    *SyncBuffer
	ManagerExited chan struct{}
}

// StartCluster starts the control plane, writes its kubeconfigs, and stops
// both (and the manager, if running) when the test ends.
func StartCluster(t *testing.T) *Cluster {
	g := gomega.NewWithT(t)
	assets, err := controlplane.Assets()
	g.Expect(err).NotTo(gomega.HaveOccurred())
	c := &Cluster{Env: &envtest.Environment{BinaryAssetsDirectory: assets}}
	_, err = c.Env.Start()
	g.Expect(err).NotTo(gomega.HaveOccurred())
	dir := t.TempDir()
	c.AdminKubeconfig = filepath.Join(dir, "admin.kubeconfig")
	g.Expect(controlplane.WriteAdminKubeconfig(c.Env, c.AdminKubeconfig)).To(gomega.Succeed())

	// The manager's identity is its ServiceAccount, bound by config/rbac only.
	cfg, err := clientcmd.LoadFromFile(c.AdminKubeconfig)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	for _, user := range cfg.AuthInfos {
		user.Impersonate = ServiceAccount
		user.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + OperatorNamespace, "system:authenticated"}
	}
	c.ManagerKubeconfig = filepath.Join(dir, "manager.kubeconfig")
	g.Expect(clientcmd.WriteToFile(*cfg, c.ManagerKubeconfig)).To(gomega.Succeed())

	t.Cleanup(func() {
		if t.Failed() && c.ManagerLog != nil {
			fmt.Fprintf(os.Stderr, "\n===== manager log =====\n%s\n===== CircuitBreakers =====\n%s\n", c.ManagerLog, c.KubectlQuiet("get", "cb", "-A", "-o", "yaml"))
		}
		if c.Manager != nil {
			c.StopManager(gomega.NewWithT(t))
		}
		_ = c.Env.Stop()
	})
	return c
}

// StartManager starts bin/manager as PrimaryReplica and waits for /readyz.
func (c *Cluster) StartManager(t *testing.T) {
	g := gomega.NewWithT(t)
	if c.ManagerLog == nil { // first start; a restart keeps the addresses
		c.ManagerLog = &SyncBuffer{}
		c.ProxyAddr, c.Health, c.API, c.Metrics = FreeAddr(g), FreeAddr(g), FreeAddr(g), FreeAddr(g)
	}
	args := []string{
		"--kubeconfig", c.ManagerKubeconfig,
		"--proxy-bind-address", c.ProxyAddr,
		"--api-bind-address", c.API,
		"--health-probe-bind-address", c.Health,
		"--metrics-bind-address", c.Metrics,
		"--notify-webhook", c.Webhook,
	}
	if !c.RefuseURLs {
		args = append(args, "--allow-url-upstreams")
	}
	if c.LeaderElect {
		args = append(args, "--leader-elect", "--leader-election-namespace", OperatorNamespace)
	}
	c.Manager = exec.Command(filepath.Join(Root, "bin", "manager"), args...)
	c.Manager.Env = append(os.Environ(), "POD_NAME="+PrimaryReplica)
	c.Manager.Stdout, c.Manager.Stderr = c.ManagerLog, c.ManagerLog
	g.Expect(c.Manager.Start()).To(gomega.Succeed())
	c.ManagerExited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { _ = cmd.Wait(); close(exited) }(c.Manager, c.ManagerExited)
	g.Eventually(func() int { return status("http://" + c.Health + "/readyz") }, 20*time.Second, 100*time.Millisecond).Should(gomega.Equal(200))
}

// StopManager sends the manager SIGTERM and waits for it to exit.
func (c *Cluster) StopManager(g gomega.Gomega) {
	_ = c.Manager.Process.Signal(syscall.SIGTERM)
	g.Eventually(c.ManagerExited, 20*time.Second).Should(gomega.BeClosed())
	c.Manager = nil
}

// Replica is a second bin/manager process next to the cluster's own.
type Replica struct {
	Cmd               *exec.Cmd
	Exited            chan struct{}
	Log               *SyncBuffer
	ProxyAddr, Health string
}

// StartReplica runs another manager with leader election, as a second pod
// would, with extra flags appended; it is stopped when the test ends.
func (c *Cluster) StartReplica(t *testing.T, name string, extra ...string) *Replica {
	g := gomega.NewWithT(t)
	r := &Replica{Log: &SyncBuffer{}, ProxyAddr: FreeAddr(g), Health: FreeAddr(g), Exited: make(chan struct{})}
	args := append([]string{
		"--kubeconfig", c.ManagerKubeconfig, "--allow-url-upstreams",
		"--proxy-bind-address", r.ProxyAddr, "--api-bind-address", FreeAddr(g),
		"--health-probe-bind-address", r.Health, "--metrics-bind-address", "0",
		"--leader-elect", "--leader-election-namespace", OperatorNamespace,
	}, extra...)
	r.Cmd = exec.Command(filepath.Join(Root, "bin", "manager"), args...)
	r.Cmd.Env = append(os.Environ(), "POD_NAME="+name)
	r.Cmd.Stdout, r.Cmd.Stderr = r.Log, r.Log
	g.Expect(r.Cmd.Start()).To(gomega.Succeed())
	go func() { _ = r.Cmd.Wait(); close(r.Exited) }()
	t.Cleanup(func() {
		_ = r.Cmd.Process.Signal(syscall.SIGTERM)
		<-r.Exited
		if t.Failed() {
			fmt.Fprintf(os.Stderr, "\n===== %s log =====\n%s\n", name, r.Log)
		}
	})
	g.Eventually(func() int { return status("http://" + r.Health + "/readyz") }, 20*time.Second, 100*time.Millisecond).Should(gomega.Equal(200))
	return r
}

// KubectlErr runs kubectl as the cluster admin.
func (c *Cluster) KubectlErr(args ...string) (string, error) {
	return c.KubectlStdin("", args...)
}

// KubectlStdin runs kubectl as the cluster admin with stdin.
func (c *Cluster) KubectlStdin(stdin string, args ...string) (string, error) {
	cmd := exec.Command("kubectl", args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.AdminKubeconfig)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Kubectl runs kubectl as the cluster admin and fails the test on error.
func (c *Cluster) Kubectl(g gomega.Gomega, args ...string) string {
	return c.KubectlOffset(1, g, args...)
}

// KubectlOffset is Kubectl for helpers: a failure is reported offset
// frames above the caller.
func (c *Cluster) KubectlOffset(offset int, g gomega.Gomega, args ...string) string {
	out, err := c.KubectlErr(args...)
	g.ExpectWithOffset(offset+1, err).NotTo(gomega.HaveOccurred(), "kubectl %s\n%s", strings.Join(args, " "), out)
	return out
}

// KubectlQuiet returns kubectl's output, errors included, for polling.
func (c *Cluster) KubectlQuiet(args ...string) string {
	out, _ := c.KubectlErr(args...)
	return out
}

// KubectlApply applies manifest and fails the test on error.
func (c *Cluster) KubectlApply(t *testing.T, manifest string) {
	out, err := c.KubectlStdin(manifest, "apply", "-f", "-")
	gomega.NewWithT(t).ExpectWithOffset(1, err).NotTo(gomega.HaveOccurred(), out)
}

// Upstream is an HTTP server that fails on command.
type Upstream struct {
	*httptest.Server
	Failing  atomic.Bool
	Hits     atomic.Int64
	LastPath atomic.Value
}

// NewUpstream starts an Upstream on loopback, closed when the test ends.
func NewUpstream(t *testing.T) *Upstream {
	u := &Upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.Hits.Add(1)
		u.LastPath.Store(r.URL.Path)
		if u.Failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, `{"orders":[]}`)
	}))
	t.Cleanup(u.Close)
	return u
}

// HookReceiver records the JSON documents POSTed to it.
type HookReceiver struct {
	*httptest.Server
	mu   sync.Mutex
	docs []map[string]any
}

// NewHookReceiver starts a HookReceiver on loopback, closed when the test ends.
func NewHookReceiver(t *testing.T) *HookReceiver {
	h := &HookReceiver{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var doc map[string]any
		if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&doc) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.docs = append(h.docs, doc)
		h.mu.Unlock()
	}))
	t.Cleanup(h.Close)
	return h
}

// Received is every document received so far.
func (h *HookReceiver) Received() []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]map[string]any(nil), h.docs...)
}

var client = &http.Client{Timeout: 5 * time.Second}

// status is the status code of a GET of url, 0 without an answer.
func status(url string) int {
	resp, err := client.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// FreeAddr is a loopback address with a port free at the time of asking.
func FreeAddr(g gomega.Gomega) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer l.Close()
	return l.Addr().String()
}

// SyncBuffer collects a process's output from its two streams.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ChildProcess returns the pid of this test's child process called name
// (the control plane's kube-apiserver, say).
func ChildProcess(g gomega.Gomega, name string) int {
	entries, err := os.ReadDir("/proc")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		open, closing := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if open < 0 || closing < open {
			continue
		}
		fields := strings.Fields(string(stat[closing+1:]))
		if string(stat[open+1:closing]) == name && len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			return pid
		}
	}
	g.Expect(name).To(gomega.BeEmpty(), "no child process called %s", name)
	return 0
}
