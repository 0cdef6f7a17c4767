package controller_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/controlplane"
	"github.com/circuitbreaker-io/operator/internal/leader"
	"github.com/circuitbreaker-io/operator/internal/notify"
	"github.com/circuitbreaker-io/operator/internal/operator"
)

var (
	restConfig *rest.Config
	k8sClient  client.Client
	nsCounter  atomic.Int32
	// replicaCounter names each test manager's replica uniquely.
	replicaCounter atomic.Int32
)

func TestMain(m *testing.M) {
	// Waits that are not themselves the subject of a test get room for a
	// loaded CI machine; the "within a second" checks pass their own timeout.
	SetDefaultEventuallyTimeout(10 * time.Second)
	log.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapLevelFromEnv())))
	env, err := controlplane.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	restConfig = env.Config
	k8sClient, err = client.New(restConfig, client.Options{Scheme: controlplane.Scheme()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the API server:", err)
	}
	os.Exit(code)
}

// zapLevelFromEnv keeps the manager's logs to errors unless TEST_LOG=debug.
func zapLevelFromEnv() zapcore.Level {
	if os.Getenv("TEST_LOG") == "debug" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel
}

// newNamespace creates a namespace for one test.
func newNamespace(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d", strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())), nsCounter.Add(1))
	if len(name) > 63 {
		name = name[len(name)-63:]
		name = strings.TrimLeft(name, "-")
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	NewWithT(t).Expect(k8sClient.Create(context.Background(), ns)).To(Succeed())
	createService(t, name, "order-api")
	return name
}

// createService creates a selector-less ClusterIP Service with port 8080
// ("http") and a slice of one ready endpoint, as the upstream of breakers
// whose spec names it. The endpoint is a test host's address that nothing
// listens on: tests that call through it make their own (testhosts).
func createService(t *testing.T, namespace, name string) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}},
	}
	NewWithT(t).Expect(k8sClient.Create(context.Background(), svc)).To(Succeed())
	writeSlice(t, namespace, name, "a", endpointAt("198.18.0.10"))
}

// endpointAt is a ready slice endpoint at address.
func endpointAt(address string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{address}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}
}

// writeSlice creates or replaces the EndpointSlice service-suffix of
// Service service, its port "http" at 8080, with endpoints.
func writeSlice(t *testing.T, namespace, service, suffix string, endpoints ...discoveryv1.Endpoint) {
	g := NewWithT(t)
	addressType := discoveryv1.AddressTypeIPv4
	if len(endpoints) > 0 && strings.Contains(endpoints[0].Addresses[0], ":") {
		addressType = discoveryv1.AddressTypeIPv6
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: service + "-" + suffix,
			Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: addressType,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080))}},
		Endpoints:   endpoints,
	}
	ctx := context.Background()
	var existing discoveryv1.EndpointSlice
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(slice), &existing); err == nil {
		existing.Ports, existing.Endpoints = slice.Ports, slice.Endpoints // its address type is immutable
		g.Expect(k8sClient.Update(ctx, &existing)).To(Succeed())
		return
	}
	g.Expect(k8sClient.Create(ctx, slice)).To(Succeed())
}

// harness is a running manager with a fresh operator, built by the
// constructor cmd/manager uses.
type harness struct {
	*operator.Operator
	// cache is the manager's cache.
	cache cache.Cache
	// exited is closed when the manager's Start returns.
	exited  chan struct{}
	metrics *prometheus.Registry
	// statusPatches counts the status writes the Reconciler made as the
	// leader; entryWrites those of this replica's own entry.
	statusPatches, entryWrites atomic.Int64
	// name is the replica's name in status.replicas.
	name string
	// stop stops the manager (and is done at the test's end anyway).
	stop func()
}

// harnessConfig is what harnessOptions change.
type harnessConfig struct {
	manager        ctrl.Options
	clock          clock.WithTicker
	leaseNamespace string // "": no leader election
	// webhook, when set, is the URL the manager notifies of transitions.
	webhook string
	// unreachable, when set, makes every request of the manager fail while
	// it is true (the API server away); refuseWrites, its status writes and
	// Event creates (the API server refusing them).
	unreachable, refuseWrites *atomic.Bool
}

type harnessOption func(*harnessConfig)

// withClock gives the breakers clk instead of the real clock.
func withClock(clk clock.WithTicker) harnessOption {
	return func(c *harnessConfig) { c.clock = clk }
}

// withLeaderElection makes the manager one of the replicas that elect a
// leader by a Lease in namespace, with short timings.
func withLeaderElection(namespace string) harnessOption {
	return func(c *harnessConfig) { c.leaseNamespace = namespace }
}

// withWebhook has the manager notify url of transitions.
func withWebhook(url string) harnessOption {
	return func(c *harnessConfig) { c.webhook = url }
}

// withOutage makes every request the manager sends fail while down is
// true, as if the API server were away: its watches that are open stay
// open, as a TCP connection to a stopped process does.
func withOutage(down *atomic.Bool) harnessOption {
	return func(c *harnessConfig) { c.unreachable = down }
}

// withRefusedWrites makes the manager's status writes and Event creates
// fail while refused is true; leader election goes on.
func withRefusedWrites(refused *atomic.Bool) harnessOption {
	return func(c *harnessConfig) { c.refuseWrites = refused }
}

// errUnavailable is what a request gets from an API server that is away.
var errUnavailable = errors.New("dial tcp: connect: connection refused")

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// refused is the error of a write the API server refuses while refusing is set.
func refused(refusing *atomic.Bool) error {
	if refusing != nil && refusing.Load() {
		return apierrors.NewServiceUnavailable("the API server refuses writes")
	}
	return nil
}

// startManager runs a manager with a fresh Reconciler that sees only namespace,
// as a restarted manager would start: with an empty registry.
func startManager(t *testing.T, namespace string, opts controller.Options, hopts ...harnessOption) *harness {
	t.Helper()
	g := NewWithT(t)
	h := &harness{metrics: prometheus.NewRegistry()}
	var refusing *atomic.Bool
	countPatches := interceptor.Funcs{
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			h.statusPatches.Add(1)
			if err := refused(refusing); err != nil {
				return err
			}
			return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
		},
		SubResourceApply: func(ctx context.Context, c client.Client, sub string, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
			h.entryWrites.Add(1)
			if err := refused(refusing); err != nil {
				return err
			}
			return c.SubResource(sub).Apply(ctx, obj, opts...)
		},
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if _, ok := obj.(*eventsv1.Event); ok {
				if err := refused(refusing); err != nil {
					return err
				}
			}
			return c.Create(ctx, obj, opts...)
		},
	}
	cfg := harnessConfig{clock: clock.RealClock{}, manager: ctrl.Options{
		Scheme:                 controlplane.Scheme(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache: cache.Options{DefaultNamespaces: map[string]cache.Config{namespace: {}},
			// As cmd/manager: the controller sees only the certificates.
			ByObject: map[client.Object]cache.ByObject{&corev1.ConfigMap{}: {Transform: controller.TrimConfigMap}}},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
		NewClient: func(cfg *rest.Config, o client.Options) (client.Client, error) {
			c, err := client.NewWithWatch(cfg, o)
			return interceptor.NewClient(c, countPatches), err
		},
	}}
	for _, o := range hopts {
		o(&cfg)
	}
	refusing = cfg.refuseWrites
	rc := restConfig
	if down := cfg.unreachable; down != nil {
		rc = rest.CopyConfig(restConfig)
		rc.WrapTransport = func(next http.RoundTripper) http.RoundTripper {
			return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
				if down.Load() {
					return nil, errUnavailable
				}
				return next.RoundTrip(r)
			})
		}
	}
	mgr, err := ctrl.NewManager(rc, cfg.manager)
	g.Expect(err).NotTo(HaveOccurred())
	h.name = fmt.Sprintf("replica-%d", replicaCounter.Add(1))
	h.cache = mgr.GetCache()
	// Built as cmd/manager builds it; the test leaves out the servers and
	// serves the proxy's handler where it needs one.
	ocfg := operator.Config{
		ReplicaName: h.name,
		Clock:       cfg.clock,
		Registerer:  h.metrics,
		Log:         log.Log.WithName(h.name),
		Controller:  opts,
	}
	if cfg.webhook != "" {
		ocfg.Webhook, err = notify.NewWebhook(cfg.webhook, notify.Options{Backoff: 10 * time.Millisecond, Log: ocfg.Log.WithName("webhook")})
		g.Expect(err).NotTo(HaveOccurred())
	}
	if cfg.leaseNamespace != "" {
		ocfg.LeaderElection = &leader.Config{
			Namespace: cfg.leaseNamespace, Name: "circuit-breaker-operator-test", Identity: h.name,
			LeaseDuration: 2 * time.Second, RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond,
		}
	}
	h.Operator, err = operator.New(mgr, ocfg)
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	h.exited = make(chan struct{})
	go func() { done <- mgr.Start(ctx); close(h.exited) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			g.Eventually(done, 30*time.Second).Should(Receive(BeNil()))
		})
	}
	t.Cleanup(h.stop)
	return h
}

// events lists "reason: note" of the Events recorded on a breaker, once per
// occurrence (a repeated Event is one object with a series count).
func events(g Gomega, namespace, name string) []string {
	var list eventsv1.EventList
	g.Expect(k8sClient.List(context.Background(), &list, client.InNamespace(namespace))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name != name || e.Regarding.Kind != "CircuitBreaker" {
			continue
		}
		count := 1
		if e.Series != nil {
			count = int(e.Series.Count)
		}
		for range count {
			out = append(out, e.Reason+": "+e.Note)
		}
	}
	return out
}

// countPrefix counts the entries of list that start with prefix.
func countPrefix(list []string, prefix string) int {
	n := 0
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

func getBreaker(g Gomega, namespace, name string) *cbv1.CircuitBreaker {
	var cb cbv1.CircuitBreaker
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: namespace, Name: name}, &cb)).To(Succeed())
	return &cb
}
