// Package controller reconciles CircuitBreaker resources into the live
// breaker registry and the proxy's routes, and writes each breaker's state
// back into its status.
package controller

import (
	"context"
	"errors"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
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
	// Clock stamps the replica's status entries; default the real clock.
	Clock clock.PassiveClock
}

// Reconciler keeps the registry and the proxy's routes in step with the
// CircuitBreaker resources and writes each breaker's live state into its
// status. Every replica reconciles, so that each one's proxy serves; only
// the leader writes status and Events.
type Reconciler struct {
	client   client.Client
	recorder recorder.EventRecorder
	registry *breaker.Registry
	routes   *proxy.Table
	opts     Options
	status   statusWriter
	replicas replicaWriter

	// announced holds, by key, the last transition logged and recorded as
	// an Event, so each one is announced once.
	announced sync.Map
	// refusedResets holds, by key, the reset value last refused, so each
	// refused value is reported once.
	refusedResets sync.Map

	// leader says whether this replica leads, and runs the leader's work.
	leader Leader

	// queue is the controller's work queue, captured when it starts, so
	// breaker changes enqueue their resource without a channel in between.
	queue atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]
}

// announcement is the last transition of breaker that was announced.
type announcement struct {
	breaker *breaker.Breaker
	seq     uint64
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
	r := &Reconciler{client: c, recorder: rec, registry: registry, routes: routes, leader: leader, opts: opts}
	r.status = statusWriter{client: c, leading: leader.Leading}
	r.replicas = replicaWriter{client: c, fleet: opts.Fleet, clock: opts.Clock}
	return r
}

// +kubebuilder:rbac:groups=circuitbreaker.io,resources=circuitbreakers,verbs=get;list;watch
// +kubebuilder:rbac:groups=circuitbreaker.io,resources=circuitbreakers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch

// Reconcile puts one CircuitBreaker into the registry and the routes,
// announces its new transitions, and writes its status (deferred, once).
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	log := ctrl.LoggerFrom(ctx)
	key := breaker.NewKey(req.Namespace, req.Name)
	var cb cbv1.CircuitBreaker
	if err := r.client.Get(ctx, req.NamespacedName, &cb); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(key)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}

	base := r.status.base(key, &cb)
	status := base.DeepCopy()
	status.ObservedGeneration = cb.Generation
	defer func() {
		if err := r.status.patch(ctx, key, &cb, &base, status); err != nil {
			log.Error(err, "status write failed", "state", status.State)
			retErr = errors.Join(retErr, err)
		}
	}()

	b, cfg, refused, err := r.serve(ctx, key, &cb, &base)
	if err != nil {
		return ctrl.Result{}, err
	}
	if refused != nil {
		r.refuse(ctx, &cb, status, refused)
		return ctrl.Result{}, nil
	}

	value, resetRefused := resetRequest(&cb)
	switch {
	case resetRefused != "":
		r.refuseReset(ctx, &cb, key, value, resetRefused)
	case value != "":
		b.Reset(value, "breaker reset to Closed by annotation "+cbv1.ResetAnnotation+"="+value)
	}

	// Counting is this replica's; the decision is the fleet's.
	if d, ok := r.replicas.decision(&cb); ok {
		b.Follow(d)
	}
	snap := b.Snapshot()
	r.announce(ctx, &cb, key, b, snap)
	applySnapshot(status, snap)
	status.Upstream = cfg.route.Target.String()
	setServing(status, cb.Generation, resetRefused)
	if err := r.replicas.write(ctx, key, &cb, snap); err != nil {
		log.Error(err, "writing this replica's status entry failed", "state", statusStates[snap.State])
		return result, err
	}
	if r.leading() {
		var gone []string
		status.OpenReplicas, gone = r.replicas.fleetView(&cb, snap)
		for _, name := range gone {
			if err := r.replicas.apply(ctx, &cb, name, nil); err != nil {
				log.Error(err, "removing the status entry of a replica that is gone failed", "replica", name)
				return result, err
			}
			log.Info("removed the status entry of a replica that is gone", "replica", name)
		}
	}
	if snap.State == breaker.StateOpen && !snap.OpenUntil.IsZero() { // forced open has no probing time
		// Come back when probing starts, so the status shows HalfOpen even
		// when no traffic arrives to notice it. Measured from the
		// snapshot's own time, not from after the status write.
		result.RequeueAfter = max(snap.OpenUntil.Sub(snap.At), minRequeue)
	}
	return result, nil
}

// upstreamService returns the Service cb's upstream names, nil when there is
// none (or the upstream is a URL).
func (r *Reconciler) upstreamService(ctx context.Context, cb *cbv1.CircuitBreaker) (*corev1.Service, error) {
	up := cb.Spec.Upstream.Service
	if up == nil {
		return nil, nil
	}
	var svc corev1.Service
	if err := r.client.Get(ctx, types.NamespacedName{Namespace: cb.Namespace, Name: up.Name}, &svc); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	return &svc, nil
}

// refuseReset reports, once per value, a reset annotation that is not acted on.
func (r *Reconciler) refuseReset(ctx context.Context, cb *cbv1.CircuitBreaker, key breaker.Key, value, why string) {
	if last, ok := r.refusedResets.Load(key); ok && last.(string) == value {
		return
	}
	r.refusedResets.Store(key, value)
	ctrl.LoggerFrom(ctx).Info("reset refused", "length", len(value), "max", maxResetValue)
	r.event(cb, corev1.EventTypeWarning, ReasonReset, "Reset", why)
}

// serve is the data plane's part of a reconcile: it puts cb into the
// registry (restored from saved when new) and gives it its route, or
// refuses it. The proxy answers 403 for a stalled spec, and 503 while the
// refusal may end by itself (a Service that does not exist yet).
func (r *Reconciler) serve(ctx context.Context, key breaker.Key, cb *cbv1.CircuitBreaker, saved *cbv1.CircuitBreakerStatus) (
	*breaker.Breaker, runtimeConfig, *refusal, error) {
	svc, err := r.upstreamService(ctx, cb)
	if err != nil {
		return nil, runtimeConfig{}, nil, err
	}
	cfg, refused := translate(cb, svc, r.opts)
	if refused != nil {
		code := http.StatusServiceUnavailable
		if refused.stalled {
			code = http.StatusForbidden
		}
		r.routes.Refuse(key, code, refused.message)
		r.registry.Delete(key)
		r.announced.Delete(key)
		return nil, cfg, refused, nil
	}
	b, created := r.registry.Upsert(key, string(cb.UID), cfg.settings, savedSnapshot(saved))
	if created {
		ctrl.LoggerFrom(ctx).V(1).Info("breaker created", "namespace", cb.Namespace, "name", cb.Name, "state", statusStates[b.Snapshot().State])
	}
	r.routes.Set(key, b, cfg.route)
	return b, cfg, nil, nil
}

// primeRoutes gives every breaker that exists its route as soon as the
// cache has synced, ahead of the workers, which also write each status: a
// restarted replica routes all its breakers (and is Ready) in seconds, not
// after the last status write. Each reconcile later redoes the same, so a
// breaker deleted meanwhile is forgotten again.
func (r *Reconciler) primeRoutes(ctx context.Context, c cache.Cache) {
	if !c.WaitForCacheSync(ctx) {
		return
	}
	var list cbv1.CircuitBreakerList
	if err := c.List(ctx, &list); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing CircuitBreakers to route them")
		return
	}
	for i := range list.Items {
		cb := &list.Items[i]
		key := breaker.NewKey(cb.Namespace, cb.Name)
		if r.routes.Has(key) {
			continue // a worker got there first
		}
		if _, _, _, err := r.serve(ctx, key, cb, &cb.Status); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "routing a CircuitBreaker", "namespace", cb.Namespace, "name", cb.Name)
		}
		r.enqueue(key)
	}
	ctrl.LoggerFrom(ctx).Info("routed every CircuitBreaker", "count", len(list.Items))
}

// everyReplica is a manager Runnable that runs on every replica, not only
// the leader.
type everyReplica func(ctx context.Context)

func (f everyReplica) Start(ctx context.Context) error { f(ctx); return nil }
func (everyReplica) NeedLeaderElection() bool          { return false }

// refuse says in the conditions why cb cannot be served.
func (r *Reconciler) refuse(ctx context.Context, cb *cbv1.CircuitBreaker, status *cbv1.CircuitBreakerStatus, why *refusal) {
	status.Upstream = ""
	if ready := meta.FindStatusCondition(status.Conditions, cbv1.ConditionReady); ready == nil ||
		ready.Reason != why.reason || ready.Message != why.message || ready.ObservedGeneration != cb.Generation {
		ctrl.LoggerFrom(ctx).Info("breaker refused", "reason", why.reason, "message", why.message)
	}
	setRefused(status, cb.Generation, why)
}

// forget removes every trace of a deleted resource.
func (r *Reconciler) forget(key breaker.Key) {
	r.routes.Delete(key)
	r.registry.Delete(key)
	r.status.forget(key)
	r.replicas.forget(key)
	r.announced.Delete(key)
	r.refusedResets.Delete(key)
}

// announce logs each transition of b not yet announced and, on the leader,
// records it as an Event. Transitions restored from a status were announced
// before the restart (their Seq is 0).
func (r *Reconciler) announce(ctx context.Context, cb *cbv1.CircuitBreaker, key breaker.Key, b *breaker.Breaker, snap breaker.Snapshot) {
	var last uint64
	if a, ok := r.announced.Load(key); ok && a.(announcement).breaker == b {
		last = a.(announcement).seq
	}
	newest := last
	log := ctrl.LoggerFrom(ctx)
	for _, t := range snap.History {
		if t.Seq <= last {
			continue
		}
		newest = max(newest, t.Seq)
		from, to := statusStates[t.From], statusStates[t.To]
		if t.Reset {
			log.Info("breaker reset", "from", from, "to", to, "reason", t.Reason)
			r.event(cb, corev1.EventTypeNormal, ReasonReset, "Reset", t.Reason)
			continue
		}
		log.Info("breaker transition", "from", from, "to", to, "reason", t.Reason, "openReason", t.OpenReason, "mode", snap.Settings.Mode.String())
		eventType := corev1.EventTypeNormal
		if t.To == breaker.StateOpen {
			eventType = corev1.EventTypeWarning
		}
		note := t.Reason
		if snap.Settings.Mode == breaker.ModeObserve {
			note += " (mode Observe: no call is rejected)"
		}
		r.event(cb, eventType, transitionReason(t.To), "Transition", note)
	}
	if newest != last {
		r.announced.Store(key, announcement{breaker: b, seq: newest})
	}
}

// event records an Event on cb, on the leader only, with the note cut to
// what the API server accepts.
func (r *Reconciler) event(cb *cbv1.CircuitBreaker, eventType, reason, action, note string) {
	if r.leading() {
		r.recorder.Eventf(cb, nil, eventType, reason, action, "%s", truncate(note, maxEventNote))
	}
}

// leading reports whether this replica is the leader (always, without leader election).
func (r *Reconciler) leading() bool { return r.leader.Leading() }

func transitionReason(to breaker.State) string {
	switch to {
	case breaker.StateOpen:
		return ReasonOpened
	case breaker.StateHalfOpen:
		return ReasonHalfOpened
	}
	return ReasonClosed
}

// serviceIndex indexes CircuitBreakers by the Service their upstream names.
const serviceIndex = "spec.upstream.service.name"

func (r *Reconciler) breakersOfService(ctx context.Context, svc client.Object) []reconcile.Request {
	var list cbv1.CircuitBreakerList
	if err := r.client.List(ctx, &list, client.InNamespace(svc.GetNamespace()), client.MatchingFields{serviceIndex: svc.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing the breakers of a Service", "namespace", svc.GetNamespace(), "service", svc.GetName())
		return nil
	}
	requests := make([]reconcile.Request, 0, len(list.Items))
	for _, cb := range list.Items {
		requests = append(requests, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&cb)})
	}
	return requests
}

// replicaIndex indexes CircuitBreakers by the replicas that have entries in
// their status, so the entries of a replica that is gone are found.
const replicaIndex = "status.replicas.name"

// ReplicaGone has the leader remove the entries of replica name, which is gone.
func (r *Reconciler) ReplicaGone(name string) {
	if !r.leading() {
		return
	}
	ctx := context.Background()
	var list cbv1.CircuitBreakerList
	if err := r.client.List(ctx, &list, client.MatchingFields{replicaIndex: name}); err != nil {
		return
	}
	for i := range list.Items {
		r.enqueue(breaker.NewKey(list.Items[i].Namespace, list.Items[i].Name))
	}
}

// othersChanged passes status updates that change another replica's entry
// or remove this one's: what this replica follows, or must write again.
func (r *Reconciler) othersChanged() predicate.Predicate {
	self := r.opts.Fleet.Self()
	others := func(o client.Object) ([]cbv1.ReplicaStatus, bool) {
		var list []cbv1.ReplicaStatus
		hasSelf := false
		for _, e := range o.(*cbv1.CircuitBreaker).Status.Replicas {
			if e.Name == self {
				hasSelf = true
				continue
			}
			list = append(list, e)
		}
		return list, hasSelf
	}
	return predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
		UpdateFunc: func(e event.UpdateEvent) bool {
			before, hadSelf := others(e.ObjectOld)
			after, hasSelf := others(e.ObjectNew)
			return (hadSelf && !hasSelf) || !equality.Semantic.DeepEqual(before, after)
		},
	}
}

func (r *Reconciler) enqueue(key breaker.Key) {
	if q := r.queue.Load(); q != nil {
		namespace, name := key.Split()
		(*q).Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: namespace, Name: name}})
	}
}

// SetupWithManager registers the controller on every replica, subscribes it
// to the registry's changes, and adds the leader's work: on election, write
// every breaker's state as this replica sees it, then flush count changes.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.registry.OnTransition(func(key breaker.Key, _ breaker.Transition) { r.enqueue(key) })
	r.registry.OnCountsChanged(r.enqueue)
	if err := mgr.Add(everyReplica(func(ctx context.Context) { r.primeRoutes(ctx, mgr.GetCache()) })); err != nil {
		return err
	}
	// Every replica writes its own entry as its counts change.
	if err := mgr.Add(everyReplica(func(ctx context.Context) { r.registry.Run(ctx, CountsFlushInterval) })); err != nil {
		return err
	}
	r.leader.OnElected(func(context.Context) {
		for _, key := range r.registry.Keys() {
			r.enqueue(key)
		}
	})
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &cbv1.CircuitBreaker{}, serviceIndex, func(o client.Object) []string {
		if svc := o.(*cbv1.CircuitBreaker).Spec.Upstream.Service; svc != nil {
			return []string{svc.Name}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &cbv1.CircuitBreaker{}, replicaIndex, func(o client.Object) []string {
		entries := o.(*cbv1.CircuitBreaker).Status.Replicas
		names := make([]string, 0, len(entries))
		for _, e := range entries {
			names = append(names, e.Name)
		}
		return names
	}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		// An annotation change (a reset) does not bump the generation.
		// Another replica's entry changing is a decision to follow.
		For(&cbv1.CircuitBreaker{}, builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, r.othersChanged()))).
		// A Service appearing, going or changing its type changes what the
		// breakers that name it may do.
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.breakersOfService)).
		WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			r.queue.Store(&q)
			return nil
		})).
		Named("circuitbreaker").
		WithOptions(controller.Options{
			// Breakers are independent, and a reconcile mostly waits for its
			// status write: the write rate at scale is the workers' number
			// over the API server's latency (docs/benchmarks.md, bench-scale).
			MaxConcurrentReconciles: 32,
			// Every replica's proxy needs live breakers, not just the leader's.
			NeedLeaderElection: ptr.To(false),
			// Failed status writes (an API server that went away) are retried
			// at least every maxRetryDelay, so the status converges soon after
			// it returns; the default would back off to 16 minutes.
			RateLimiter: workqueue.NewTypedMaxOfRateLimiter(
				workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, maxRetryDelay),
				&workqueue.TypedBucketRateLimiter[reconcile.Request]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
			),
		}).
		Complete(r)
}
