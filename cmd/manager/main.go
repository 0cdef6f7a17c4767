// Command manager runs the circuit breaker operator: the controller that
// keeps breakers in step with CircuitBreaker resources, the proxy that sends
// traffic through them, and the REST API.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/leader"
	"github.com/circuitbreaker-io/operator/internal/metricsauth"
	"github.com/circuitbreaker-io/operator/internal/notify"
	"github.com/circuitbreaker-io/operator/internal/operator"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

const (
	// drainPeriod is how long the proxy keeps accepting calls after SIGTERM
	// before it closes its listener: /readyz fails at once, and every answer
	// meanwhile carries Connection: close (idle keep-alive connections are
	// closed), so that callers reconnect to another replica while this one
	// still answers, instead of finding their pooled connection reset.
	drainPeriod = 3 * time.Second
	// shutdownTimeout is how long in-flight calls get to finish once the
	// drain is over; the install's terminationGracePeriodSeconds leaves room
	// for the preStop pause, the drain and this.
	shutdownTimeout = 20 * time.Second
)

func main() {
	if err := run(); err != nil {
		ctrl.Log.WithName("setup").Error(err, "manager stopped")
		os.Exit(1)
	}
}

// run parses the flags, builds the operator and serves until a signal. Every
// failure returns here, and main exits on it.
func run() error {
	var (
		proxyAddr, apiAddr, metricsAddr, probeAddr string
		notifyWebhook, clusterDomain, denyCIDRs    string
		proxyService                               string
		leaderElectionNamespace                    string
		leaderElect, metricsSecure, enableHTTP2    bool
		allowURLUpstreams                          bool
		maxConcurrentRequests, maxConnections      int64
	)
	flag.StringVar(&proxyAddr, "proxy-bind-address", ":8080", "address of the data plane: /<namespace>/<name>/<path>")
	flag.StringVar(&apiAddr, "api-bind-address", "127.0.0.1:8082", "address of the REST API and dashboard (reach it with kubectl port-forward)")
	flag.StringVar(&notifyWebhook, "notify-webhook", "", "URL to POST a JSON notification to on every transition")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "address of the Prometheus metrics endpoint; 0 turns it off")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.BoolVar(&metricsSecure, "metrics-secure", true,
		"serve metrics over HTTPS with Kubernetes authentication and authorization; false for plain HTTP in development")
	flag.BoolVar(&enableHTTP2, "enable-http2", false,
		"serve HTTP/2 on the metrics server; off by default for the HTTP/2 Stream Cancellation and Rapid Reset CVEs")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect one replica to write status and Events (a Lease); losing it never stops the process")
	flag.StringVar(&leaderElectionNamespace, "leader-election-namespace", "",
		"namespace of the leader election Lease (default: the pod's namespace in a cluster; required outside one with --leader-elect)")
	flag.BoolVar(&allowURLUpstreams, "allow-url-upstreams", false,
		"allow spec.upstream.url: a development or single-tenant switch, since a URL can point anywhere")
	flag.StringVar(&denyCIDRs, "upstream-deny-cidrs", "",
		"comma-separated ranges no Service upstream may reach, besides loopback, link-local, metadata and the API server (e.g. the node and pod ranges)")
	flag.Int64Var(&maxConcurrentRequests, "max-concurrent-requests", 0,
		"calls in flight through the proxy, all breakers together; beyond it 503 saturated (0: sized from the memory limit)")
	flag.Int64Var(&maxConnections, "max-connections", 0,
		"caller connections open to the proxy; beyond it new ones wait to be accepted (0: sized from the memory limit)")
	flag.StringVar(&clusterDomain, "cluster-domain", controller.DefaultClusterDomain,
		"the cluster's DNS domain: Service upstreams are dialled as <name>.<namespace>.svc.<cluster-domain>.")
	flag.StringVar(&proxyService, "proxy-service", "",
		"namespace/name of the proxy's own Service, which exposed breakers' Services point at (default: "+controller.DefaultProxyService+
			" in the manager's namespace, "+controller.DefaultProxyNamespace+" outside a cluster)")
	zapOpts := zap.Options{Development: true}
	zapOpts.BindFlags(flag.CommandLine)
	// --kubeconfig is registered by controller-runtime's config package.
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	setupLog := ctrl.Log.WithName("setup")

	// Flags that can be wrong stop the manager before it touches the cluster.
	var webhook *notify.Webhook
	if notifyWebhook != "" {
		var err error
		webhook, err = notify.NewWebhook(notifyWebhook, notify.Options{Log: ctrl.Log.WithName("notify"), Registerer: ctrlmetrics.Registry})
		if err != nil {
			return fmt.Errorf("invalid --notify-webhook: %w", err)
		}
	}

	proxySvc, err := parseProxyService(proxyService)
	if err != nil {
		return fmt.Errorf("invalid --proxy-service: %w", err)
	}

	deny, err := parseCIDRs(denyCIDRs)
	if err != nil {
		return fmt.Errorf("invalid --upstream-deny-cidrs: %w", err)
	}

	if maxConcurrentRequests < 0 || maxConnections < 0 {
		return errors.New("--max-concurrent-requests and --max-connections may not be negative")
	}
	memory := memoryLimit()
	sizedCalls, sizedConnections := proxy.Capacity(memory)
	if maxConcurrentRequests == 0 {
		maxConcurrentRequests = sizedCalls
	}
	if maxConnections == 0 {
		maxConnections = sizedConnections
	}
	proxyListener, err := proxy.Listen(proxyAddr, int(maxConnections))
	if err != nil {
		return fmt.Errorf("cannot listen on --proxy-bind-address: %w", err)
	}
	setupLog.Info("data plane bounds", "memoryLimit", memory, "maxConcurrentRequests", maxConcurrentRequests, "maxConnections", maxConnections)

	scheme := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), cbv1.AddToScheme(scheme)); err != nil {
		return err
	}

	metricsOpts := metricsserver.Options{BindAddress: metricsAddr}
	if metricsSecure {
		// As kubebuilder's scaffold: HTTPS (a self-signed certificate unless
		// one is mounted), and only callers whose token may GET /metrics;
		// metricsauth says why it is not controller-runtime's filter.
		metricsOpts.SecureServing = true
		metricsOpts.FilterProvider = metricsauth.FilterProvider
	}
	if !enableHTTP2 {
		// As kubebuilder's scaffold: HTTP/1.1 only, so that the HTTP/2
		// Stream Cancellation and Rapid Reset CVEs do not apply.
		metricsOpts.TLSOpts = append(metricsOpts.TLSOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	restConfig, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("no cluster to connect to: %w", err)
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsOpts,
		// The cache holds what the controller reads, and no more: no
		// managedFields, and of each Service only what an upstream needs.
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				&corev1.Service{}: {Transform: controller.TrimService},
				// Only slices that belong to a Service, trimmed to what
				// the endpoints rules read.
				&discoveryv1.EndpointSlice{}: {Label: sliceOfService, Transform: controller.TrimEndpointSlice},
				// Of ConfigMaps, only the entries that hold certificates.
				&corev1.ConfigMap{}: {Transform: controller.TrimConfigMap},
			},
		},
		HealthProbeBindAddress: probeAddr,
		// Leader election is internal/leader's: controller-runtime's would
		// stop the whole process, data plane included, on a lost lease.
		LeaderElection: false,
		// In-flight calls get this long to finish once the drain is over.
		GracefulShutdownTimeout: ptr.To(shutdownTimeout + 5*time.Second),
	})
	if err != nil {
		return fmt.Errorf("unable to create manager: %w", err)
	}

	cfg := operator.Config{
		ReplicaName:  replicaName(),
		Clock:        clock.RealClock{},
		Registerer:   ctrlmetrics.Registry,
		Log:          ctrl.Log,
		Webhook:      webhook,
		Controller:   controller.Options{AllowURLUpstreams: allowURLUpstreams, ClusterDomain: clusterDomain, ProxyService: proxySvc},
		ProxyAddr:    proxyAddr,
		APIAddr:      apiAddr,
		DenyNetworks: deny,

		MaxConcurrentRequests: maxConcurrentRequests,
		HeapFloor:             operator.HeapFloorFor(memory),
	}
	if leaderElect {
		cfg.LeaderElection = &leader.Config{
			Namespace: leaderElectionNamespace, Name: "circuit-breaker-operator.circuitbreaker.io", Log: ctrl.Log.WithName("leader"),
		}
	}
	op, err := operator.New(mgr, cfg)
	if err != nil {
		return err
	}
	if err := mgr.Add(&manager.Server{Name: "proxy", Server: op.Proxy, Listener: proxyListener, ShutdownTimeout: ptr.To(shutdownTimeout)}); err != nil {
		return err
	}
	if err := mgr.Add(&manager.Server{Name: "api", Server: op.API, ShutdownTimeout: ptr.To(shutdownTimeout)}); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	// Ready once every breaker that exists has its route.
	if err := mgr.AddReadyzCheck("routes", op.Ready.Check); err != nil {
		return err
	}
	var draining atomic.Bool
	if err := mgr.AddReadyzCheck("draining", func(*http.Request) error {
		if draining.Load() {
			return errors.New("shutting down")
		}
		return nil
	}); err != nil {
		return err
	}

	setupLog.Info("starting manager")
	return mgr.Start(drain(ctrl.SetupSignalHandler(), func() {
		setupLog.Info("draining: not ready, answering with Connection: close", "for", drainPeriod)
		draining.Store(true)
		op.Proxy.SetKeepAlivesEnabled(false)
	}))
}

// drain returns a context that ends drainPeriod after signalled does, having
// called start when signalled ended. The manager stops (the proxy closes its
// listener and shuts down gracefully) when the returned context ends; a
// second signal still exits at once (ctrl.SetupSignalHandler).
func drain(signalled context.Context, start func()) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer cancel()
		<-signalled.Done()
		start()
		<-time.After(drainPeriod)
	}()
	return ctx
}

// sliceOfService selects the EndpointSlices that name their Service.
var sliceOfService = func() labels.Selector {
	req, err := labels.NewRequirement(discoveryv1.LabelServiceName, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant requirement
	}
	return labels.NewSelector().Add(*req)
}()

// replicaName names this replica in the status: the pod's name (POD_NAME,
// from the downward API), else the host's.
func replicaName() string {
	if name := os.Getenv("POD_NAME"); name != "" {
		return name
	}
	host, _ := os.Hostname()
	return host
}

// memoryLimit is the process's memory limit in bytes, which sizes the data
// plane's bounds: GOMEMLIMIT when set, else the container's (cgroup v2
// memory.max, else v1 memory.limit_in_bytes), else 0 (none).
func memoryLimit() int64 {
	if limit := debug.SetMemoryLimit(-1); limit != math.MaxInt64 {
		return limit
	}
	for _, file := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		data, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		// "max", or v1's "no limit" (a huge number), read as none.
		if limit, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err == nil && limit < 1<<50 {
			return limit
		}
		return 0
	}
	return 0
}

// parseCIDRs reads a comma-separated list of CIDR ranges; empty is none.
func parseCIDRs(list string) ([]*net.IPNet, error) {
	var networks []*net.IPNet
	for _, field := range strings.Split(list, ",") {
		if field = strings.TrimSpace(field); field == "" {
			continue
		}
		_, n, err := net.ParseCIDR(field)
		if err != nil {
			return nil, err
		}
		networks = append(networks, n)
	}
	return networks, nil
}

// inClusterNamespace is where a pod finds its own namespace.
const inClusterNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// parseProxyService reads --proxy-service, "namespace/name" or "name" (in
// the manager's namespace); empty is the install's proxy Service.
func parseProxyService(s string) (types.NamespacedName, error) {
	namespace, name, qualified := strings.Cut(s, "/")
	if !qualified {
		namespace, name = "", s
		if own, err := os.ReadFile(inClusterNamespace); err == nil {
			namespace = strings.TrimSpace(string(own))
		}
	}
	if name == "" {
		name = controller.DefaultProxyService
	}
	if namespace == "" {
		namespace = controller.DefaultProxyNamespace
	}
	for _, part := range []string{namespace, name} {
		if errs := validation.IsDNS1123Label(part); len(errs) > 0 {
			return types.NamespacedName{}, fmt.Errorf("%q: %s", part, errs[0])
		}
	}
	return types.NamespacedName{Namespace: namespace, Name: name}, nil
}
