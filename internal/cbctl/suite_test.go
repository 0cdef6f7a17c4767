package cbctl_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/cbctl"
	"github.com/circuitbreaker-io/operator/internal/controlplane"
)

var (
	// kubeconfig is a cluster admin's, for the plugin's --kubeconfig.
	kubeconfig string
	// k8sClient plays the manager's part: it writes status and Events.
	k8sClient client.WithWatch
	clientset kubernetes.Interface
	nsCounter atomic.Int32
)

func TestMain(m *testing.M) {
	SetDefaultEventuallyTimeout(10 * time.Second)
	os.Exit(runWithAPIServer(m))
}

func runWithAPIServer(m *testing.M) int {
	env, err := controlplane.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the API server:", err)
		}
	}()
	dir, err := os.MkdirTemp("", "cbctl-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := controlplane.WriteAdminKubeconfig(env, kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if k8sClient, err = client.NewWithWatch(env.Config, client.Options{Scheme: controlplane.Scheme()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if clientset, err = kubernetes.NewForConfig(env.Config); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// newNamespace creates a namespace for one test.
func newNamespace(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("cbctl-%d", nsCounter.Add(1))
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	NewWithT(t).Expect(k8sClient.Create(context.Background(), ns)).To(Succeed())
	return name
}

// result is what one run of the plugin printed, and its exit code.
type result struct {
	code           int
	stdout, stderr string
}

// kubectlCB runs the plugin to its end with the admin kubeconfig.
func kubectlCB(args ...string) result {
	var stdout, stderr bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(""), Out: &stdout, ErrOut: &stderr}
	code := cbctl.Run(context.Background(), append([]string{"--kubeconfig", kubeconfig}, args...), streams)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// running is a run of the plugin that goes on until stopped (watch, get -w).
type running struct {
	stdout, stderr *syncBuffer
	stop           context.CancelFunc
	// exited is closed when the run returns, with its exit code in code.
	exited chan struct{}
	code   int
}

func startKubectlCB(t *testing.T, args ...string) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{stdout: &syncBuffer{}, stderr: &syncBuffer{}, stop: cancel, exited: make(chan struct{})}
	streams := genericiooptions.IOStreams{In: strings.NewReader(""), Out: r.stdout, ErrOut: r.stderr}
	go func() {
		defer close(r.exited)
		r.code = cbctl.Run(ctx, append([]string{"--kubeconfig", kubeconfig}, args...), streams)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.exited
	})
	return r
}

// interrupt stops the run as Ctrl-C would, and returns its exit code.
func (r *running) interrupt(g Gomega) int {
	r.stop()
	g.Eventually(r.exited).Should(BeClosed(), "the run ends when interrupted")
	return r.code
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// createBreaker creates a breaker with spec (a URL upstream when it names none).
func createBreaker(t *testing.T, namespace, name string, spec cbv1.CircuitBreakerSpec) *cbv1.CircuitBreaker {
	t.Helper()
	if spec.Upstream.URL == "" && spec.Upstream.Service == nil {
		spec.Upstream.URL = "http://127.0.0.1:9/" + name
	}
	cb := &cbv1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Spec: spec}
	NewWithT(t).Expect(k8sClient.Create(context.Background(), cb)).To(Succeed())
	return cb
}

// writeStatus writes status as the manager would, through the status subresource.
func writeStatus(t *testing.T, namespace, name string, change func(*cbv1.CircuitBreakerStatus)) {
	t.Helper()
	g := NewWithT(t)
	var cb cbv1.CircuitBreaker
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: namespace, Name: name}, &cb)).To(Succeed())
	change(&cb.Status)
	g.Expect(k8sClient.Status().Update(context.Background(), &cb)).To(Succeed())
}

func getBreaker(g Gomega, namespace, name string) *cbv1.CircuitBreaker {
	var cb cbv1.CircuitBreaker
	g.ExpectWithOffset(1, k8sClient.Get(context.Background(), client.ObjectKey{Namespace: namespace, Name: name}, &cb)).To(Succeed())
	return &cb
}

// at is a fixed instant plus offset: transitions at known times.
func at(offset time.Duration) time.Time {
	return time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC).Add(offset)
}
