// Command manager runs the circuit breaker operator: the controller that
// keeps breakers in step with CircuitBreaker resources, the proxy that sends
// traffic through them, and the REST API.
package main

import (
	"flag"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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

	var webhook *notify.Webhook
	if notifyWebhook != "" {
		var err error
		if webhook, err = notify.NewWebhook(notifyWebhook, notify.Options{Log: ctrl.Log.WithName("notify")}); err != nil {
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

	metrics := proxy.NewMetrics(ctrlmetrics.Registry)
	routes := proxy.NewTable(metrics)
	onTransition := metrics.RecordTransition
	if webhook != nil {
		utilruntime.Must(mgr.Add(manager.RunnableFunc(webhook.Run)))
		ctrlmetrics.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "circuitbreaker_notifications_dropped_total",
			Help: "Transition notifications dropped because the webhook queue was full.",
		}, func() float64 { return float64(webhook.Dropped()) }))
		onTransition = func(key breaker.Key, t breaker.Transition) {
			metrics.RecordTransition(key, t)
			webhook.Notify(key, t)
		}
	}
	reconciler := controller.New(mgr.GetClient(), mgr.GetEventRecorder("circuit-breaker-operator"), clock.RealClock{}, routes,
		controller.Options{AllowURLUpstreams: allowURLUpstreams, OnTransition: onTransition})
	if err := reconciler.SetupWithManager(mgr); err != nil {
		setupLog.Error(err, "unable to set up controller")
		os.Exit(1)
	}
	for name, srv := range map[string]*http.Server{
		"proxy": {Addr: proxyAddr, Handler: proxy.New(routes, clock.RealClock{})},
		"api":   {Addr: apiAddr, Handler: api.New(reconciler.Registry, mgr.GetClient(), clock.RealClock{}, api.DefaultResetTimeout)},
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
