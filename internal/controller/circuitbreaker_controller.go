// Package controller reconciles CircuitBreaker resources into the live
// breaker registry and writes each breaker's state back into its status.
package controller

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
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

// Ready condition reasons.
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

// Options configure the Reconciler.
type Options struct {
	// AllowURLUpstreams permits spec.upstream.url.
	AllowURLUpstreams bool
	// OnTransition, when set, is told of every breaker transition too
	// (metrics, notifications).
	OnTransition func(breaker.Key, breaker.Transition)
}

// Reconciler keeps the Registry in step with the CircuitBreaker resources
// and writes each breaker's live state into its status.
type Reconciler struct {
	client   client.Client
	recorder recorder.EventRecorder
	clock    clock.WithTicker
	routes   *proxy.Table
	opts     Options

	// Registry holds the live breakers, shared with the proxy and the API.
	Registry *breaker.Registry

	// written holds, by Key, the writtenStatus last patched: the base of the
	// next patch, since the cache can lag behind our own writes.
	written sync.Map

	// elected is closed once this replica leads: only the leader writes
	// status and Events, while every replica keeps live breakers and routes
	// so that each one's proxy serves.
	elected <-chan struct{}

	// queue is the controller's work queue, captured when it starts, so
	// breaker changes enqueue their resource without a channel in between.
	queue atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]
}

// New returns a Reconciler with an empty registry that keeps routes in step.
func New(c client.Client, rec recorder.EventRecorder, clk clock.WithTicker, routes *proxy.Table, opts Options) *Reconciler {
	r := &Reconciler{client: c, recorder: rec, clock: clk, routes: routes, opts: opts}
	r.Registry = breaker.NewRegistry(clk, breaker.RegistryOptions{
		OnTransition:    r.onTransition,
		OnCountsChanged: r.enqueue,
	})
	return r
}

// +kubebuilder:rbac:groups=circuitbreaker.io,resources=circuitbreakers,verbs=get;list;watch
// +kubebuilder:rbac:groups=circuitbreaker.io,resources=circuitbreakers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile puts one CircuitBreaker into the registry and writes its status.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	key := breaker.NewKey(req.Namespace, req.Name)
	var cb cbv1.CircuitBreaker
	if err := r.client.Get(ctx, req.NamespacedName, &cb); err != nil {
		if apierrors.IsNotFound(err) {
			r.routes.Delete(key)
			r.Registry.Delete(key)
			r.written.Delete(key)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	// The cache may not have caught up with our last status write yet.
	if last, ok := r.written.Load(key); ok && last.(writtenStatus).uid == cb.UID {
		cb.Status = *last.(writtenStatus).status.DeepCopy()
	}

	status := cb.Status.DeepCopy()
	status.ObservedGeneration = cb.Generation

	upstream, reason, err := r.resolveUpstream(&cb)
	if err != nil {
		return ctrl.Result{}, r.refuse(ctx, key, &cb, status, reason, err)
	}
	status.Upstream = upstream.String()

	b, _ := r.Registry.Upsert(key, settingsFromSpec(&cb.Spec), savedSnapshot(&cb.Status))
	if err := r.routes.Set(key, b, upstream, &cb.Spec); err != nil {
		return ctrl.Result{}, r.refuse(ctx, key, &cb, status, ReasonInvalidSpec, err)
	}

	if value := cb.Annotations[cbv1.ResetAnnotation]; value != "" &&
		b.Reset(value, "reset requested by annotation "+cbv1.ResetAnnotation+"="+value) && r.leading() {
		r.recorder.Eventf(&cb, nil, corev1.EventTypeNormal, ReasonReset, "Reset",
			"breaker reset to Closed by annotation %s=%s", cbv1.ResetAnnotation, value)
	}

	snap := b.Snapshot()
	applySnapshot(status, snap)
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: cbv1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: ReasonActive, Message: "forwarding to " + status.Upstream, ObservedGeneration: cb.Generation,
	})
	if err := r.patchStatus(ctx, key, &cb, status); err != nil {
		return ctrl.Result{}, err
	}
	if snap.State == breaker.StateOpen {
		// Come back when probing starts, so the status shows HalfOpen even
		// when no traffic arrives to notice it.
		return ctrl.Result{RequeueAfter: snap.OpenUntil.Sub(r.clock.Now()) + 10*time.Millisecond}, nil
	}
	return ctrl.Result{}, nil
}

// refuse takes a breaker that cannot serve out of the registry, makes the
// proxy answer 403 for it, and says why in the Ready condition.
func (r *Reconciler) refuse(ctx context.Context, key breaker.Key, cb *cbv1.CircuitBreaker, status *cbv1.CircuitBreakerStatus, reason string, err error) error {
	r.routes.Refuse(key, err.Error())
	r.Registry.Delete(key)
	status.Upstream = ""
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: cbv1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: reason, Message: err.Error(), ObservedGeneration: cb.Generation,
	})
	return r.patchStatus(ctx, key, cb, status)
}

// writtenStatus is the status last written for a resource.
type writtenStatus struct {
	uid    types.UID
	status *cbv1.CircuitBreakerStatus
}

// patchStatus writes status with one merge patch against the status as
// stored, and not at all when nothing changed.
func (r *Reconciler) patchStatus(ctx context.Context, key breaker.Key, cb *cbv1.CircuitBreaker, status *cbv1.CircuitBreakerStatus) error {
	if !r.leading() || equality.Semantic.DeepEqual(&cb.Status, status) {
		return nil
	}
	patch := client.MergeFrom(cb.DeepCopy())
	cb.Status = *status
	if err := r.client.Status().Patch(ctx, cb, patch); err != nil {
		return client.IgnoreNotFound(err)
	}
	r.written.Store(key, writtenStatus{uid: cb.UID, status: status})
	return nil
}

// resolveUpstream returns the URL calls are forwarded to, or the Ready
// reason and error that explain why there is none.
func (r *Reconciler) resolveUpstream(cb *cbv1.CircuitBreaker) (*url.URL, string, error) {
	up := cb.Spec.Upstream
	switch {
	case up.Service != nil:
		scheme := up.Service.Scheme
		if scheme == "" {
			scheme = "http"
		}
		return &url.URL{Scheme: scheme, Host: fmt.Sprintf("%s.%s.svc:%d", up.Service.Name, cb.Namespace, up.Service.Port)}, "", nil
	case up.URL != "":
		if !r.opts.AllowURLUpstreams {
			return nil, ReasonUpstreamNotAllowed, fmt.Errorf("spec.upstream.url is refused: the manager runs without --allow-url-upstreams")
		}
		u, err := url.Parse(up.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, ReasonInvalidUpstream, fmt.Errorf("spec.upstream.url %q is not an absolute http(s) URL", up.URL)
		}
		return u, "", nil
	}
	return nil, ReasonInvalidUpstream, fmt.Errorf("spec.upstream needs exactly one of service or url")
}

// settingsFromSpec maps a spec onto breaker settings; zero values (a spec
// not yet defaulted) take the breaker's defaults, which equal the schema's.
func settingsFromSpec(spec *cbv1.CircuitBreakerSpec) breaker.Settings {
	return breaker.Settings{
		FailureThreshold:    uint32(max(spec.FailureThreshold, 0)),
		RecoveryTimeout:     durationOrZero(spec.RecoveryTimeout),
		HalfOpenMaxRequests: uint32(max(spec.HalfOpenMaxRequests, 0)),
		SuccessThreshold:    uint32(max(spec.SuccessThreshold, 0)),
	}
}

func durationOrZero(d *metav1.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.Duration
}

// savedSnapshot is the state recorded in a status, used when the breaker is
// created again, e.g. after a manager restart.
func savedSnapshot(st *cbv1.CircuitBreakerStatus) *breaker.Snapshot {
	state, err := breaker.ParseState(st.State)
	if err != nil {
		return nil
	}
	s := &breaker.Snapshot{State: state, Failures: uint32(max(st.FailureCount, 0)), LastResetID: st.LastHandledReset}
	if st.LastFailureTime != nil {
		s.LastFailure = st.LastFailureTime.Time
	}
	if st.LastTransitionTime != nil {
		s.LastTransitionTime = st.LastTransitionTime.Time
	}
	if st.OpenUntil != nil {
		s.OpenUntil = st.OpenUntil.Time
	}
	for _, h := range st.History {
		from, errFrom := breaker.ParseState(h.From)
		to, errTo := breaker.ParseState(h.To)
		if errFrom == nil && errTo == nil {
			s.History = append(s.History, breaker.Transition{From: from, To: to, At: h.Time.Time, Reason: h.Reason})
		}
	}
	return s
}

// applySnapshot writes the breaker's state into status. Times are kept to
// whole seconds, as the API server stores them, so an unchanged breaker
// compares equal and is not written again; openUntil is rounded up so a
// restored breaker never starts probing early.
func applySnapshot(status *cbv1.CircuitBreakerStatus, s breaker.Snapshot) {
	status.State = s.State.String()
	status.FailureCount = int32(s.Failures)
	status.LastFailureTime = wholeSeconds(s.LastFailure, false)
	status.LastTransitionTime = wholeSeconds(s.LastTransitionTime, false)
	status.OpenUntil = wholeSeconds(s.OpenUntil, true)
	status.LastHandledReset = s.LastResetID
	status.History = nil
	for _, t := range s.History {
		// Microseconds, as the API server stores them.
		at := metav1.NewMicroTime(t.At.Truncate(time.Microsecond).UTC())
		status.History = append(status.History, cbv1.TransitionRecord{Time: at, From: t.From.String(), To: t.To.String(), Reason: t.Reason})
	}
}

func wholeSeconds(t time.Time, roundUp bool) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	truncated := t.Truncate(time.Second)
	if roundUp && truncated.Before(t) {
		truncated = truncated.Add(time.Second)
	}
	mt := metav1.NewTime(truncated.UTC())
	return &mt
}

// onTransition enqueues the resource and records the transition as an Event.
func (r *Reconciler) onTransition(key breaker.Key, t breaker.Transition) {
	r.enqueue(key)
	if r.opts.OnTransition != nil {
		r.opts.OnTransition(key, t)
	}
	if t.Reset || !r.leading() {
		return // the reconcile that reset it records the Reset event
	}
	namespace, name := key.Split()
	var cb cbv1.CircuitBreaker
	if err := r.client.Get(context.Background(), types.NamespacedName{Namespace: namespace, Name: name}, &cb); err != nil {
		return
	}
	eventType := corev1.EventTypeNormal
	if t.To == breaker.StateOpen {
		eventType = corev1.EventTypeWarning
	}
	r.recorder.Eventf(&cb, nil, eventType, transitionReason(t.To), "Transition", "%s", t.Reason)
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

// SetupWithManager registers the controller, on every replica, and the
// leader's work: on election, write every breaker's state as this replica
// sees it, then flush count changes.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.elected = mgr.Elected()
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		for _, key := range r.Registry.Keys() {
			r.enqueue(key)
		}
		r.Registry.Run(ctx, CountsFlushInterval)
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
