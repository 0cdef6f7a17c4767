// Package controller reconciles CircuitBreaker resources into the live
// breaker registry and the proxy's routes, and writes each breaker's state
// back into its status.
package controller

import (
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

// Event reasons, as the contract names them.
const (
	ReasonOpened     = "Opened"
	ReasonHalfOpened = "HalfOpened"
	ReasonClosed     = "Closed"
	ReasonReset      = "Reset"
)

// Ready (and Stalled) condition reasons.
const (
	ReasonActive             = "Active"
	ReasonInvalidUpstream    = "InvalidUpstream"
	ReasonUpstreamNotAllowed = "UpstreamNotAllowed"
	ReasonInvalidSpec        = "InvalidSpec"
	ReasonServiceNotFound    = "ServiceNotFound"
	// ReasonPortNotFound: the Service has no port of that number or name.
	ReasonPortNotFound = "PortNotFound"
	// ReasonCAConfigMapNotFound: spec.upstream.tls.caConfigMap names a
	// ConfigMap that does not exist.
	ReasonCAConfigMapNotFound = "CAConfigMapNotFound"
	// ReasonCABundleInvalid: the ConfigMap has no PEM certificate under
	// the key (the key is missing, or holds none).
	ReasonCABundleInvalid = "CABundleInvalid"
)

// CountsFlushInterval is how often failure counts that changed without a
// transition are written to the status: often enough to watch, rare enough
// that traffic never turns into API writes.
const CountsFlushInterval = time.Second

// minRequeue keeps the requeue for an Open breaker positive: controller-runtime
// ignores a zero or negative RequeueAfter.
const minRequeue = 10 * time.Millisecond

// maxRetryDelay bounds the backoff of a failing reconcile.
const maxRetryDelay = 5 * time.Second

// maxEventNote is the API server's bound on an Event's note.
const maxEventNote = 1024

// Options configure the Reconciler.
type Options struct {
	// AllowURLUpstreams permits spec.upstream.url.
	AllowURLUpstreams bool
	// ClusterDomain is the cluster's DNS domain; default DefaultClusterDomain.
	ClusterDomain string
	// Fleet is this replica among the others; default Alone(host name).
	Fleet Fleet
	// Clock stamps the replica's status entries and Events; default the real clock.
	Clock clock.PassiveClock
	// ProxyService is the proxy's own Service (--proxy-service), which
	// exposed Services point at; default DefaultProxyService in
	// DefaultProxyNamespace.
	ProxyService types.NamespacedName
	// Notifier, when set, is told of each transition the leader announces
	// (the webhook).
	Notifier Notifier
}

// DefaultProxyNamespace is the install's namespace, for ProxyService.
const DefaultProxyNamespace = "circuit-breaker-operator-system"

// Reconciler keeps the registry and the proxy's routes in step with the
// CircuitBreaker resources and writes each breaker's live state into its
// status. Every replica reconciles, so that each one's proxy serves, and
// writes its own entry of status.replicas; only the leader writes the rest
// of the status, and Events.
type Reconciler struct {
	client   client.Client
	recorder recorder.EventRecorder
	registry *breaker.Registry
	routes   *proxy.Table
	opts     Options
	// leaderStatus writes the per-object status patch (all but the
	// replicas' entries), on the leader only; entries applies this
	// replica's own entry of status.replicas on every replica, and on the
	// leader removes the entries of replicas that are gone.
	leaderStatus leaderStatusWriter
	entries      replicaEntryWriter

	// announced holds, by key, the announcement of what this replica
	// logged and announced (events.go), so each transition is logged once
	// and announced once.
	announced sync.Map
	// refusedResets holds, by key, the reset value last refused, so each
	// refused value is reported once.
	refusedResets sync.Map

	// leader says whether this replica leads, and runs the leader's work.
	leader Leader

	// serviceUsers maps each Service to the breakers whose upstream it is.
	serviceUsers serviceUsers

	// caPools are the CA bundles of spec.upstream.tls.caConfigMap, parsed.
	caPools caPools

	// queue is the controller's work queue, captured when it starts, so
	// breaker changes enqueue their resource without a channel in between.
	queue atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]
}

// Leader is the replica's part in leader election (internal/leader).
type Leader interface {
	// Leading reports whether this replica leads now.
	Leading() bool
	// OnElected runs fn at the start of every term, with a context that
	// ends with the term.
	OnElected(fn func(ctx context.Context))
}

// New returns a Reconciler that keeps registry and routes in step with the
// resources, writing status and Events while leader leads.
func New(c client.Client, rec recorder.EventRecorder, registry *breaker.Registry, routes *proxy.Table, leader Leader, opts Options) *Reconciler {
	if opts.Fleet == nil {
		host, _ := os.Hostname()
		opts.Fleet = Alone(host)
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.ClusterDomain = strings.Trim(opts.ClusterDomain, "."); opts.ClusterDomain == "" {
		opts.ClusterDomain = DefaultClusterDomain
	}
	if opts.ProxyService.Name == "" {
		opts.ProxyService.Name = DefaultProxyService
	}
	if opts.ProxyService.Namespace == "" {
		opts.ProxyService.Namespace = DefaultProxyNamespace
	}
	r := &Reconciler{client: c, recorder: rec, registry: registry, routes: routes, leader: leader, opts: opts}
	background := make(chan struct{}, maxBackgroundWrites)
	r.leaderStatus = leaderStatusWriter{client: c, leading: leader.Leading, background: background}
	r.entries = replicaEntryWriter{client: c, fleet: opts.Fleet, clock: opts.Clock, background: background}
	return r
}
