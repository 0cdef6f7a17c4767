// Package controller reconciles CircuitBreaker resources into the live
// breaker registry and the proxy's routes, and writes each breaker's state
// back into its status.
package controller

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/manager"
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
)

// CountsFlushInterval is how often failure counts that changed without a
// transition are written to the status: often enough to watch, rare enough
// that traffic never turns into API writes.
const CountsFlushInterval = time.Second

// minRequeue keeps the requeue for an Open breaker positive: controller-runtime
// ignores a zero or negative RequeueAfter.
const minRequeue = 10 * time.Millisecond

// maxEventNote is the API server's bound on an Event's note.
const maxEventNote = 1024

// Options configure the Reconciler.
type Options struct {
	// AllowURLUpstreams permits spec.upstream.url.
	AllowURLUpstreams bool
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

	// announced holds, by key, the last transition logged and recorded as
	// an Event, so each one is announced once.
	announced sync.Map

	// elected is closed once this replica leads.
	elected <-chan struct{}

	// queue is the controller's work queue, captured when it starts, so
	// breaker changes enqueue their resource without a channel in between.
	queue atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]
}

// announcement is the last transition of breaker that was announced.
type announcement struct {
	breaker *breaker.Breaker
	seq     uint64
}

// New returns a Reconciler that keeps registry and routes in step with the resources.
func New(c client.Client, rec recorder.EventRecorder, registry *breaker.Registry, routes *proxy.Table, opts Options) *Reconciler {
	r := &Reconciler{client: c, recorder: rec, registry: registry, routes: routes, opts: opts}
	r.status = statusWriter{client: c, leading: r.leading}
	return r
}

// +kubebuilder:rbac:groups=circuitbreaker.io,resources=circuitbreakers,verbs=get;list;watch
// +kubebuilder:rbac:groups=circuitbreaker.io,resources=circuitbreakers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

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

	cfg, refused := translate(&cb, r.opts)
	if refused != nil {
		r.refuse(ctx, key, &cb, status, refused)
		return ctrl.Result{}, nil
	}
	b, created := r.registry.Upsert(key, string(cb.UID), cfg.settings, savedSnapshot(&base))
	if created {
		log.V(1).Info("breaker created", "state", statusStates[b.Snapshot().State])
	}
	r.routes.Set(key, b, cfg.route)

	if value := cb.Annotations[cbv1.ResetAnnotation]; value != "" {
		b.Reset(value, "breaker reset to Closed by annotation "+cbv1.ResetAnnotation+"="+value)
	}

	snap := b.Snapshot()
	r.announce(ctx, &cb, key, b, snap)
	applySnapshot(status, snap)
	status.Upstream = cfg.route.Target.String()
	setServing(status, cb.Generation)
	if snap.State == breaker.StateOpen {
		// Come back when probing starts, so the status shows HalfOpen even
		// when no traffic arrives to notice it. Measured from the
		// snapshot's own time, not from after the status write.
		result.RequeueAfter = max(snap.OpenUntil.Sub(snap.At), minRequeue)
	}
	return result, nil
}

// refuse takes a breaker that cannot serve out of the registry, makes the
// proxy answer 403 for it, and says why in the conditions.
func (r *Reconciler) refuse(ctx context.Context, key breaker.Key, cb *cbv1.CircuitBreaker, status *cbv1.CircuitBreakerStatus, why *refusal) {
	r.routes.Refuse(key, why.message)
	r.registry.Delete(key)
	r.announced.Delete(key)
	status.Upstream = ""
	if ready := meta.FindStatusCondition(status.Conditions, cbv1.ConditionReady); ready == nil ||
		ready.Reason != why.reason || ready.Message != why.message || ready.ObservedGeneration != cb.Generation {
		ctrl.LoggerFrom(ctx).Info("breaker refused", "reason", why.reason, "message", why.message)
	}
	setStalled(status, cb.Generation, why)
}

// forget removes every trace of a deleted resource.
func (r *Reconciler) forget(key breaker.Key) {
	r.routes.Delete(key)
	r.registry.Delete(key)
	r.status.forget(key)
	r.announced.Delete(key)
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
		log.Info("breaker transition", "from", from, "to", to, "reason", t.Reason)
		eventType := corev1.EventTypeNormal
		if t.To == breaker.StateOpen {
			eventType = corev1.EventTypeWarning
		}
		r.event(cb, eventType, transitionReason(t.To), "Transition", t.Reason)
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
func (r *Reconciler) leading() bool {
	select {
	case <-r.elected:
		return true
	default:
		return false
	}
}

func transitionReason(to breaker.State) string {
	switch to {
	case breaker.StateOpen:
		return ReasonOpened
	case breaker.StateHalfOpen:
		return ReasonHalfOpened
	}
	return ReasonClosed
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
	r.elected = mgr.Elected()
	r.registry.OnTransition(func(key breaker.Key, _ breaker.Transition) { r.enqueue(key) })
	r.registry.OnCountsChanged(r.enqueue)
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		for _, key := range r.registry.Keys() {
			r.enqueue(key)
		}
		r.registry.Run(ctx, CountsFlushInterval)
		return nil
	})); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		// An annotation change (a reset) does not bump the generation.
		For(&cbv1.CircuitBreaker{}, builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			r.queue.Store(&q)
			return nil
		})).
		Named("circuitbreaker").
		WithOptions(controller.Options{
			// Breakers are independent; a few workers keep one slow status
			// write from delaying the transitions of others.
			MaxConcurrentReconciles: 4,
			// Every replica's proxy needs live breakers, not just the leader's.
			NeedLeaderElection: ptr.To(false),
		}).
		Complete(r)
}
