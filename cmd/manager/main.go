// Command manager runs the circuit breaker operator: the controller that
// keeps breakers in step with CircuitBreaker resources, the proxy that sends
// traffic through them, and the REST API.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
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
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/leader"
	"github.com/circuitbreaker-io/operator/internal/metrics"
	"github.com/circuitbreaker-io/operator/internal/notify"
	"github.com/circuitbreaker-io/operator/internal/proxy"
	"github.com/circuitbreaker-io/operator/internal/restapi"
)

// shutdownTimeout is how long in-flight calls get to finish on SIGTERM;
// the install's terminationGracePeriodSeconds leaves room for it.
const shutdownTimeout = 20 * time.Second

func main() {
	var (
		proxyAddr, apiAddr, metricsAddr, probeAddr string
		notifyWebhook, clusterDomain               string
		leaderElectionNamespace                    string
		leaderElect, metricsSecure                 bool
		allowURLUpstreams                          bool
	)
	flag.StringVar(&proxyAddr, "proxy-bind-address", ":8080", "address of the data plane: /<namespace>/<name>/<path>")
	flag.StringVar(&apiAddr, "api-bind-address", "127.0.0.1:8082", "address of the REST API and dashboard (reach it with kubectl port-forward)")
	flag.StringVar(&notifyWebhook, "notify-webhook", "", "URL to POST a JSON notification to on every transition")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "address of the Prometheus metrics endpoint; 0 turns it off")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.BoolVar(&metricsSecure, "metrics-secure", true,
		"serve metrics over HTTPS with Kubernetes authentication and authorization; false for plain HTTP in development")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect one replica to write status and Events (a Lease); losing it never stops the process")
	flag.StringVar(&leaderElectionNamespace, "leader-election-namespace", "",
		"namespace of the leader election Lease (default: the pod's namespace in a cluster; required outside one with --leader-elect)")
	flag.BoolVar(&allowURLUpstreams, "allow-url-upstreams", false,
		"allow spec.upstream.url: a development or single-tenant switch, since a URL can point anywhere")
	flag.StringVar(&clusterDomain, "cluster-domain", controller.DefaultClusterDomain,
		"the cluster's DNS domain: Service upstreams are dialled as <name>.<namespace>.svc.<cluster-domain>.")
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
			setupLog.Error(err, "invalid --notify-webhook")
			os.Exit(1)
		}
	}

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(cbv1.AddToScheme(scheme))

	metricsOpts := metricsserver.Options{BindAddress: metricsAddr}
	if metricsSecure {
		// As kubebuilder's scaffold: HTTPS (a self-signed certificate unless
		// one is mounted), and only callers whose token may GET /metrics.
		metricsOpts.SecureServing = true
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	restConfig := ctrl.GetConfigOrDie()
	// Who writes status and Events: every replica serves, one leads; each
	// writes its own view of each breaker under its own name.
	clk := clock.RealClock{}
	replicaName := replicaName()
	elector := leader.Always()
	fleet := controller.Alone(replicaName)
	var members *leader.Members
	if leaderElect {
		var err error
		elector, err = leader.New(restConfig, leader.Config{
			Namespace: leaderElectionNamespace, Name: "circuit-breaker-operator.circuitbreaker.io", Log: ctrl.Log.WithName("leader"),
		})
		if err != nil {
			setupLog.Error(err, "unable to set up leader election")
			os.Exit(1)
		}
		members, err = leader.NewMembers(restConfig, elector.Namespace(), replicaName, clk, ctrl.Log.WithName("members"))
		if err != nil {
			setupLog.Error(err, "unable to set up replica membership")
			os.Exit(1)
		}
		fleet = members
	}

	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsOpts,
		// The cache holds what the controller reads, and no more: no
		// managedFields, and of each Service only what an upstream needs.
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject:         map[client.Object]cache.ByObject{&corev1.Service{}: {Transform: controller.TrimService}},
		},
		HealthProbeBindAddress: probeAddr,
		// Leader election is internal/leader's: controller-runtime's would
		// stop the whole process, data plane included, on a lost lease.
		LeaderElection: false,
		// In-flight calls get this long to finish on SIGTERM.
		GracefulShutdownTimeout: ptr.To(shutdownTimeout + 5*time.Second),
	})
	if err != nil {
		setupLog.Error(err, "unable to create manager")
		os.Exit(1)
	}

	utilruntime.Must(mgr.Add(elector))

	// The live breakers, and everyone who hears of their transitions.
	registry := breaker.NewRegistry(clk)
	series := metrics.NewBreakers(ctrlmetrics.Registry)
	registry.OnTransition(series.RecordTransition)
	registry.OnCountsChanged(func(key breaker.Key) {
		if b, ok := registry.Get(key); ok {
			series.RecordRates(key, b.Snapshot())
		}
	})
	if webhook != nil {
		// Every replica follows the fleet's decisions, so the leader's
		// transitions are the fleet's: notified once, not once per replica.
		registry.OnTransition(func(key breaker.Key, t breaker.Transition) {
			if elector.Leading() {
				webhook.Notify(key, t)
			}
		})
		utilruntime.Must(mgr.Add(manager.RunnableFunc(webhook.Run)))
	}

	// The controller keeps the registry and the proxy's routes in step with
	// the resources.
	routes := proxy.NewTable(series)
	reconciler := controller.New(mgr.GetClient(), mgr.GetEventRecorder("circuit-breaker-operator"), registry, routes, elector,
		controller.Options{AllowURLUpstreams: allowURLUpstreams, ClusterDomain: clusterDomain, Fleet: fleet, Clock: clk})
	if err := reconciler.SetupWithManager(mgr); err != nil {
		setupLog.Error(err, "unable to set up controller")
		os.Exit(1)
	}
	if members != nil {
		members.OnGone(reconciler.ReplicaGone)
		utilruntime.Must(mgr.Add(members))
	}

	// The data plane and the REST API.
	token := loopToken(mgr.GetAPIReader(), setupLog)
	for name, srv := range map[string]*http.Server{
		"proxy": proxy.NewServer(proxyAddr, proxy.New(routes, clk, proxy.Options{LoopToken: token})),
		"api": restapi.NewServer(apiAddr, restapi.New(registry, mgr.GetClient(), clk,
			restapi.Options{BindAddress: apiAddr, Log: ctrl.Log.WithName("api")})),
	} {
		utilruntime.Must(mgr.Add(&manager.Server{Name: name, Server: srv, ShutdownTimeout: ptr.To(shutdownTimeout)}))
	}
	utilruntime.Must(mgr.AddHealthzCheck("healthz", healthz.Ping))
	// Ready once every breaker that exists has its route.
	utilruntime.Must(mgr.AddReadyzCheck("routes", controller.NewRoutesReady(mgr.GetCache(), routes).Check))

	setupLog.Info("starting manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "manager stopped")
		os.Exit(1)
	}
}

// replicaName names this replica in the status: the pod's name (POD_NAME,
// from the downward API), else the host's.
func replicaName() string {
	if name := os.Getenv("POD_NAME"); name != "" {
		return name
	}
	host, _ := os.Hostname()
	return host
}

// +kubebuilder:rbac:groups=apiextensions.k8s.io,resources=customresourcedefinitions,resourceNames=circuitbreakers.circuitbreaker.io,verbs=get

// loopToken names this installation in the Via entries the proxy adds. It is
// derived from the CircuitBreaker CRD's UID, which every replica in the
// cluster reads alike, so a call that loops back through any replica is
// caught at the first hop. Without it (the API server unreachable at start)
// each replica uses a random token, and a loop is caught once it comes back
// to a replica it passed.
func loopToken(reader client.Reader, log logr.Logger) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	crd := &metav1.PartialObjectMetadata{}
	crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	err := reader.Get(ctx, client.ObjectKey{Name: "circuitbreakers." + cbv1.GroupVersion.Group}, crd)
	seed := string(crd.UID)
	if err != nil || seed == "" {
		log.Error(err, "cannot read the CRD's UID: this replica marks what it forwards with a token of its own")
		seed = strconv.FormatInt(time.Now().UnixNano(), 10) + strconv.Itoa(os.Getpid())
	}
	sum := sha256.Sum256([]byte(seed))
	return hex.EncodeToString(sum[:6])
}
