// Command manager runs the circuit breaker operator: the controller that
// keeps breakers in step with CircuitBreaker resources, the proxy that sends
// traffic through them, and the REST API.
package main

import (
	"flag"
	"net/http"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/api"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/notify"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

func main() {
	var (
		proxyAddr, apiAddr, metricsAddr, probeAddr string
		notifyWebhook                              string
		leaderElect                                bool
		allowURLUpstreams                          bool
	)
	flag.StringVar(&proxyAddr, "proxy-bind-address", ":8080", "address of the data plane: /<namespace>/<name>/<path>")
	flag.StringVar(&apiAddr, "api-bind-address", "127.0.0.1:8082", "address of the REST API and dashboard (reach it with kubectl port-forward)")
	flag.StringVar(&notifyWebhook, "notify-webhook", "", "URL to POST a JSON notification to on every transition")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "address of the Prometheus metrics endpoint; 0 turns it off")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.BoolVar(&leaderElect, "leader-elect", false, "use leader election for the controller")
	flag.BoolVar(&allowURLUpstreams, "allow-url-upstreams", false, "allow spec.upstream.url")
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

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress: probeAddr,
		LeaderElection:         leaderElect,
		LeaderElectionID:       "circuit-breaker-operator.circuitbreaker.io",
	})
	if err != nil {
		setupLog.Error(err, "unable to create manager")
		os.Exit(1)
	}

	// The live breakers, and everyone who hears of their transitions.
	clk := clock.RealClock{}
	registry := breaker.NewRegistry(clk)
	metrics := proxy.NewMetrics(ctrlmetrics.Registry)
	registry.OnTransition(metrics.RecordTransition)
	if webhook != nil {
		registry.OnTransition(webhook.Notify)
		utilruntime.Must(mgr.Add(manager.RunnableFunc(webhook.Run)))
	}

	// The controller keeps the registry and the proxy's routes in step with
	// the resources.
	routes := proxy.NewTable(metrics)
	reconciler := controller.New(mgr.GetClient(), mgr.GetEventRecorder("circuit-breaker-operator"), registry, routes,
		controller.Options{AllowURLUpstreams: allowURLUpstreams})
	if err := reconciler.SetupWithManager(mgr); err != nil {
		setupLog.Error(err, "unable to set up controller")
		os.Exit(1)
	}

	// The data plane and the REST API.
	for name, srv := range map[string]*http.Server{
		"proxy": {Addr: proxyAddr, Handler: proxy.New(routes, clk)},
		"api":   {Addr: apiAddr, Handler: api.New(registry, mgr.GetClient(), clk, api.DefaultResetTimeout, ctrl.Log.WithName("api"))},
	} {
		srv.ReadHeaderTimeout = 10 * time.Second
		utilruntime.Must(mgr.Add(&manager.Server{Name: name, Server: srv, ShutdownTimeout: ptr.To(10 * time.Second)}))
	}
	utilruntime.Must(mgr.AddHealthzCheck("healthz", healthz.Ping))
	utilruntime.Must(mgr.AddReadyzCheck("readyz", healthz.Ping))

	setupLog.Info("starting manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "manager stopped")
		os.Exit(1)
	}
}
