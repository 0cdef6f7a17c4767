// Package operator is the composition root: it builds the registry, the
// metrics, the notifier, the routes, the controller, the proxy and the REST
// API from a Config and hands each its dependencies. cmd/manager and the
// envtest harness both build the operator here, so the wiring the tests
// exercise is the wiring that ships.
package operator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/leader"
	"github.com/circuitbreaker-io/operator/internal/metrics"
	"github.com/circuitbreaker-io/operator/internal/notify"
	"github.com/circuitbreaker-io/operator/internal/proxy"
	"github.com/circuitbreaker-io/operator/internal/restapi"
)

// startReadTimeout bounds the API server reads New makes: the loop token's
// CRD and the API server's addresses.
const startReadTimeout = 10 * time.Second

// Config is what the operator is built from: cmd/manager fills it from its
// flags, the tests from their cases.
type Config struct {
	// ReplicaName names this replica in status.replicas and in the Lease.
	ReplicaName string
	// Clock is the breakers' time (the registry, the proxy and the REST
	// API); the tests step a fake one.
	Clock clock.WithTicker
	// Registerer receives the breakers' metric series.
	Registerer prometheus.Registerer
	Log        logr.Logger

	// LeaderElection, when set, makes this replica one of several that
	// elect a leader by a Lease; nil: it leads alone.
	LeaderElection *leader.Config
	// Webhook, when set, is notified of the fleet's transitions.
	Webhook *notify.Webhook
	// Controller configures the Reconciler; its Fleet is set here.
	Controller controller.Options

	// ProxyAddr and APIAddr are where the data plane and the REST API
	// listen.
	ProxyAddr, APIAddr string
	// DenyNetworks are ranges no Service upstream may reach besides the
	// dial guard's own (--upstream-deny-cidrs); the API server's addresses
	// are added to them here.
	DenyNetworks []*net.IPNet
	// MaxConcurrentRequests caps the calls in flight through the proxy
	// (--max-concurrent-requests); 0 is no cap.
	MaxConcurrentRequests int64
	// HeapFloor, when set, is the least heap goal of the process's
	// collector (heapfloor.go); the tests, which share a process, leave it
	// out.
	HeapFloor uint64
}

// Operator is the built operator. New adds its internal runnables (the
// elector, the membership and the webhook) and the controller to the
// manager; the caller adds the servers, which the tests may leave out.
type Operator struct {
	Registry   *breaker.Registry
	Routes     *proxy.Table
	Elector    *leader.Elector
	Reconciler *controller.Reconciler
	// Ready reports ready once every breaker that exists has its route.
	Ready *controller.RoutesReady
	// Proxy and API are the data plane's and the REST API's servers.
	Proxy, API *http.Server
}

// New builds the operator on mgr, which must not have started.
func New(mgr manager.Manager, cfg Config) (*Operator, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	op := &Operator{Elector: leader.Always()}
	// Who writes status and Events: every replica serves, one leads; each
	// writes its own view of each breaker under its own name.
	fleet := controller.Alone(cfg.ReplicaName)
	var members *leader.Members
	if cfg.LeaderElection != nil {
		var err error
		if op.Elector, err = leader.New(mgr.GetConfig(), *cfg.LeaderElection); err != nil {
			return nil, fmt.Errorf("leader election: %w", err)
		}
		// Liveness is judged against Lease times the API server keeps, in
		// wall-clock time whatever the breakers' clock.
		members, err = leader.NewMembers(mgr.GetConfig(), op.Elector.Namespace(), cfg.ReplicaName, clock.RealClock{}, cfg.Log.WithName("members"))
		if err != nil {
			return nil, fmt.Errorf("replica membership: %w", err)
		}
		fleet = members
	}
	if err := mgr.Add(op.Elector); err != nil {
		return nil, err
	}

	// The live breakers, and everyone who hears of their transitions.
	op.Registry = breaker.NewRegistry(cfg.Clock)
	series := metrics.NewBreakers(cfg.Registerer)
	op.Registry.OnTransition(series.RecordTransition)
	op.Registry.OnCountsChanged(func(key breaker.Key) {
		if b, ok := op.Registry.Get(key); ok {
			series.RecordRates(key, b.Snapshot())
		}
	})
	if cfg.Webhook != nil {
		// Every replica follows the fleet's decisions, so the leader's
		// transitions are the fleet's: the leader announces each, with its
		// Event, once, not once per replica (the controller's events.go).
		if err := mgr.Add(manager.RunnableFunc(cfg.Webhook.Run)); err != nil {
			return nil, err
		}
	}

	// The controller keeps the registry and the proxy's routes in step with
	// the resources.
	op.Routes = proxy.NewTable(series)
	opts := cfg.Controller
	if opts.Fleet == nil {
		opts.Fleet = fleet
	}
	if cfg.Webhook != nil && opts.Notifier == nil {
		opts.Notifier = cfg.Webhook
	}
	op.Reconciler = controller.New(mgr.GetClient(), mgr.GetEventRecorder("circuit-breaker-operator"), op.Registry, op.Routes, op.Elector, opts)
	op.Routes.OnEjection(op.Reconciler.EndpointEjected)
	if err := op.Reconciler.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if members != nil {
		members.OnGone(op.Reconciler.ReplicaGone)
		if err := mgr.Add(members); err != nil {
			return nil, err
		}
	}
	op.Ready = controller.NewRoutesReady(mgr.GetCache(), op.Routes)
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		returnStartMemory(ctx, op.Ready.Passed, op.Reconciler.Queued, cfg.Log.WithName("memory"))
		return nil
	})); err != nil {
		return nil, err
	}
	if cfg.HeapFloor > 0 {
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			keepHeapFloor(ctx, cfg.HeapFloor, cfg.Log.WithName("memory"))
			return nil
		})); err != nil {
			return nil, err
		}
	}

	// The data plane and the REST API.
	// What the proxy reads from the API server at start shares one bound,
	// so an API server that is away delays the start once, not per read.
	ctx, cancel := context.WithTimeout(context.Background(), startReadTimeout)
	defer cancel()
	token, secret := loopToken(ctx, mgr.GetAPIReader(), cfg.Log)
	deny := append(slices.Clip(cfg.DenyNetworks), apiServerNetworks(ctx, mgr.GetConfig().Host, mgr.GetAPIReader(), cfg.Log)...)
	op.Proxy = proxy.NewServer(cfg.ProxyAddr, proxy.New(op.Routes, cfg.Clock, proxy.Options{
		LoopToken: token, LoopSecret: secret, DenyNetworks: deny, MaxConcurrentRequests: cfg.MaxConcurrentRequests,
		ClusterDomain: cfg.Controller.ClusterDomain,
	}))
	op.API = restapi.NewServer(cfg.APIAddr, restapi.New(op.Registry, mgr.GetClient(), cfg.Clock,
		restapi.Options{BindAddress: cfg.APIAddr, Log: cfg.Log.WithName("api")}))
	return op, nil
}

// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch

// apiServerNetworks are the API server's own addresses, which a Service
// upstream must never reach (its credentials are the manager's): the
// address the manager dials, the kubernetes Service's cluster IPs and the
// addresses of its EndpointSlices, as they are at start. What cannot be
// read is logged and left out; the other guards still hold.
func apiServerNetworks(ctx context.Context, host string, reader client.Reader, log logr.Logger) []*net.IPNet {
	var ips []net.IP
	if u, err := url.Parse(host); err == nil {
		if ip := net.ParseIP(u.Hostname()); ip != nil {
			ips = append(ips, ip)
		}
	}
	var svc corev1.Service
	if err := reader.Get(ctx, client.ObjectKey{Namespace: metav1.NamespaceDefault, Name: "kubernetes"}, &svc); err != nil {
		log.Error(err, "cannot read the kubernetes Service: its cluster IP is not in the dial guard")
	}
	for _, ip := range svc.Spec.ClusterIPs {
		ips = append(ips, net.ParseIP(ip))
	}
	var endpointSlices discoveryv1.EndpointSliceList
	if err := reader.List(ctx, &endpointSlices, client.InNamespace(metav1.NamespaceDefault),
		client.MatchingLabels{discoveryv1.LabelServiceName: "kubernetes"}); err != nil {
		log.Error(err, "cannot read the kubernetes Service's EndpointSlices: the API server's endpoints are not in the dial guard")
	}
	for _, s := range endpointSlices.Items {
		for _, e := range s.Endpoints {
			for _, a := range e.Addresses {
				ips = append(ips, net.ParseIP(a))
			}
		}
	}
	var networks []*net.IPNet
	for _, ip := range ips {
		if ip == nil {
			continue
		}
		bits := 128
		if ip.To4() != nil {
			ip, bits = ip.To4(), 32
		}
		networks = append(networks, &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)})
	}
	return networks
}

// +kubebuilder:rbac:groups=apiextensions.k8s.io,resources=customresourcedefinitions,resourceNames=circuitbreakers.circuitbreaker.io,verbs=get

// loopToken names this installation in the Via entries the proxy adds, and
// secret keys its loop marks. Both are derived from the CircuitBreaker
// CRD's UID, which every replica in the cluster reads alike, so a call that
// loops back through any replica is caught at the first hop; the token is
// sent upstream, the secret never is, and one cannot be had from the other.
// Without the UID (the API server unreachable at start) each replica uses a
// random seed, and a loop is caught once it comes back to a replica it
// passed.
func loopToken(ctx context.Context, reader client.Reader, log logr.Logger) (token string, secret []byte) {
	crd := &metav1.PartialObjectMetadata{}
	crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	err := reader.Get(ctx, client.ObjectKey{Name: "circuitbreakers." + cbv1.GroupVersion.Group}, crd)
	seed := string(crd.UID)
	if err == nil && seed == "" {
		err = errors.New("the CRD has no UID")
	}
	if err != nil {
		log.Error(err, "cannot read the CRD's UID: this replica marks what it forwards with a token of its own")
		seed = strconv.FormatInt(time.Now().UnixNano(), 10) + strconv.Itoa(os.Getpid())
	}
	sum := sha256.Sum256([]byte(seed))
	key := sha256.Sum256([]byte("circuit-breaker loop secret " + seed))
	return hex.EncodeToString(sum[:6]), key[:]
}
