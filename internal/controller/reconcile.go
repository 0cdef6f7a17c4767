package controller

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

// +kubebuilder:rbac:groups=circuitbreaker.io,resources=circuitbreakers,verbs=get;list;watch
// +kubebuilder:rbac:groups=circuitbreaker.io,resources=circuitbreakers/status,verbs=get;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch

// Reconcile puts one CircuitBreaker into the registry and the routes,
// announces its new transitions, and writes its status (deferred, once),
// in these steps: serve (the data plane), expose, refuse or handleReset,
// followFleet, writeOwnEntry, announce, recordServing, writeFleetView
// (leader only) and requeueAfter.
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

	base := r.leaderStatus.base(key, &cb)
	status := base.DeepCopy()
	status.ObservedGeneration = cb.Generation
	defer func() {
		if err := r.leaderStatus.patch(ctx, key, &cb, &base, status); err != nil {
			log.Error(err, "status write failed", "state", status.State)
			retErr = errors.Join(retErr, err)
		}
	}()

	b, cfg, refused, err := r.serve(ctx, key, &cb, &base)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.expose(ctx, &cb, key, &base, status); err != nil {
		return ctrl.Result{}, err
	}
	if refused != nil {
		r.refuse(ctx, &cb, status, refused)
		return ctrl.Result{}, nil
	}
	resetRefused := r.handleReset(ctx, &cb, key, b)
	r.followFleet(&cb, b)
	snap := b.Snapshot()
	// The entry goes first: it is what the other replicas follow, and
	// the Event and webhook of the announcement can wait one write.
	entryErr := r.writeOwnEntry(ctx, key, &cb, snap)
	// What the status has of the history (as this replica last wrote it)
	// is what has been announced; what is left to announce stays out of it
	// until it is, and the reconcile is tried again (events.go).
	pending, announceErr := r.announce(ctx, &cb, key, b, snap, base.History)
	retErr = errors.Join(retErr, announceErr)
	recordServing(status, &cb, cfg, snap, resetRefused)
	status.History = keepRecorded(withoutPending(status.History, pending), base.History)
	ejectedUntil := recordEndpoints(status, cfg, r.routes.Endpoints(key))
	if entryErr != nil {
		return ctrl.Result{}, entryErr
	}
	if err := r.writeFleetView(ctx, &cb, snap, status); err != nil {
		return ctrl.Result{}, err
	}
	requeue := requeueAfter(snap)
	if !ejectedUntil.IsZero() {
		// The status shows the ejection's end when it comes.
		if d := max(ejectedUntil.Sub(snap.At), minRequeue); requeue == 0 || d < requeue {
			requeue = d
		}
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// maxEjectedShown bounds status.endpoints.ejectedEndpoints (the schema's).
const maxEjectedShown = 32

// recordEndpoints puts a Service upstream's endpoints, as this replica's
// proxy sees them, into status, and returns the soonest end of an
// ejection (zero when none).
func recordEndpoints(status *cbv1.CircuitBreakerStatus, cfg runtimeConfig, views []proxy.EndpointView) time.Time {
	if cfg.route.Host == "" {
		status.Endpoints = nil
		return time.Time{}
	}
	e := &cbv1.EndpointsStatus{Ready: int32(len(cfg.route.Endpoints))}
	var soonest time.Time
	for _, v := range views {
		if v.EjectedUntil.IsZero() {
			continue
		}
		e.Ejected++
		if soonest.IsZero() || v.EjectedUntil.Before(soonest) {
			soonest = v.EjectedUntil
		}
		if len(e.EjectedEndpoints) < maxEjectedShown {
			e.EjectedEndpoints = append(e.EjectedEndpoints, cbv1.EjectedEndpoint{
				Address: v.Addr.Addr().String(), Pod: v.Pod, Until: *wholeSeconds(v.EjectedUntil, true)})
		}
	}
	e.Summary = strconv.Itoa(int(e.Ready-e.Ejected)) + "/" + strconv.Itoa(int(e.Ready))
	status.Endpoints = e
	return soonest
}

// EndpointEjected is the proxy's word that key's endpoint e is out of the
// balancing until until: logged, and the status shows it.
func (r *Reconciler) EndpointEjected(key breaker.Key, e proxy.Endpoint, until time.Time) {
	namespace, name := key.Split()
	ctrl.Log.WithName("controller").Info("endpoint ejected", "namespace", namespace, "name", name, "address", e.Addr.String(), "pod", e.Pod, "until", until)
	r.enqueue(key)
}

// handleReset acts on the reset annotation, or reports once why it does
// not, and returns that reason (empty when the reset is not refused).
func (r *Reconciler) handleReset(ctx context.Context, cb *cbv1.CircuitBreaker, key breaker.Key, b *breaker.Breaker) string {
	value, refused := resetRequest(cb)
	switch {
	case refused != "":
		r.refuseReset(ctx, cb, key, value, refused)
	case value != "":
		b.Reset(value, resetReasonPrefix+cbv1.ResetAnnotation+"="+shownResetValue(value))
	}
	return refused
}

// followFleet takes the fleet's decision from the other replicas' entries:
// counting is this replica's; the decision is the fleet's.
func (r *Reconciler) followFleet(cb *cbv1.CircuitBreaker, b *breaker.Breaker) {
	if d, ok := r.entries.decision(cb); ok {
		b.Follow(d)
	}
}

// recordServing puts the breaker's state, its upstream and Ready=True into
// status, which the deferred patch of Reconcile writes; resetRefused, when
// set, is added to the Ready message.
func recordServing(status *cbv1.CircuitBreakerStatus, cb *cbv1.CircuitBreaker, cfg runtimeConfig, snap breaker.Snapshot, resetRefused string) {
	applySnapshot(status, snap)
	status.Upstream = cfg.route.Target.String()
	setServing(status, cb.Generation, resetRefused)
}

// writeOwnEntry writes this replica's entry of status.replicas, on every
// replica, when its view changed.
func (r *Reconciler) writeOwnEntry(ctx context.Context, key breaker.Key, cb *cbv1.CircuitBreaker, snap breaker.Snapshot) error {
	if err := r.entries.write(ctx, key, cb, snap); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "writing this replica's status entry failed", "state", statusStates[snap.State])
		return err
	}
	return nil
}

// writeFleetView is the leader's part: it summarises the replicas that see
// the breaker open into status and removes the entries of replicas that
// are gone.
func (r *Reconciler) writeFleetView(ctx context.Context, cb *cbv1.CircuitBreaker, snap breaker.Snapshot, status *cbv1.CircuitBreakerStatus) error {
	if !r.leading() {
		return nil
	}
	log := ctrl.LoggerFrom(ctx)
	var gone []string
	status.OpenReplicas, gone = r.entries.fleetView(cb, snap)
	for _, name := range gone {
		if err := r.entries.apply(ctx, cb, name, nil); err != nil {
			log.Error(err, "removing the status entry of a replica that is gone failed", "replica", name)
			return err
		}
		log.Info("removed the status entry of a replica that is gone", "replica", name)
	}
	return nil
}

// requeueAfter brings an Open breaker back when probing starts, so the
// status shows HalfOpen even when no traffic arrives to notice it. It is
// measured from the snapshot's own time, not from after the status write.
// A forced-open breaker has no probing time, and is not requeued.
func requeueAfter(snap breaker.Snapshot) time.Duration {
	if snap.State != breaker.StateOpen || snap.OpenUntil.IsZero() {
		return 0
	}
	return max(snap.OpenUntil.Sub(snap.At), minRequeue)
}

// serve is the data plane's part of a reconcile: it puts cb into the
// registry (restored from saved when new) and gives it its route, or
// refuses it. The proxy answers 403 for a stalled spec, and 503 while the
// refusal may end by itself (a Service that does not exist yet).
func (r *Reconciler) serve(ctx context.Context, key breaker.Key, cb *cbv1.CircuitBreaker, saved *cbv1.CircuitBreakerStatus) (
	*breaker.Breaker, runtimeConfig, *refusal, error) {
	service := ""
	if up := cb.Spec.Upstream.Service; up != nil {
		service = up.Name
	}
	r.serviceUsers.set(key, service) // before the Service is read (serviceusers.go)
	svc, err := r.upstreamService(ctx, cb)
	if err != nil {
		return nil, runtimeConfig{}, nil, err
	}
	slices, err := r.upstreamSlices(ctx, cb)
	if err != nil {
		return nil, runtimeConfig{}, nil, err
	}
	bundle, err := r.upstreamCABundle(ctx, cb)
	if err != nil {
		return nil, runtimeConfig{}, nil, err
	}
	cfg, refused := translate(cb, upstreamObjects{service: svc, slices: slices, caBundle: bundle}, &r.caPools, r.opts)
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
	if cb.Spec.Upstream.Service != nil {
		// Before anything reads the breaker (a snapshot may move a
		// restored Open breaker to HalfOpen, only for it to open again
		// for want of endpoints), and before the route: a call it takes
		// finds the circuit open already.
		b.SetEndpointsUsable(len(cfg.route.Endpoints) > 0)
	}
	if created {
		ctrl.LoggerFrom(ctx).V(1).Info("breaker created", "namespace", cb.Namespace, "name", cb.Name, "state", statusStates[b.Snapshot().State])
	}
	r.routes.Set(key, b, cfg.route)
	return b, cfg, nil, nil
}

// sliceServiceIndex indexes EndpointSlices by the Service they belong to
// (their kubernetes.io/service-name label).
const sliceServiceIndex = "metadata.labels.service-name"

// upstreamSlices returns the EndpointSlices of the Service cb's upstream
// names (none for a URL upstream).
func (r *Reconciler) upstreamSlices(ctx context.Context, cb *cbv1.CircuitBreaker) ([]discoveryv1.EndpointSlice, error) {
	up := cb.Spec.Upstream.Service
	if up == nil {
		return nil, nil
	}
	// Through the index, not a label selector, which the cache answers by
	// matching every slice in the namespace: at start, with hundreds of
	// Services in a namespace, that was a third of the replica's CPU. No
	// deep copies: the slices are only read (serviceEndpoints).
	var list discoveryv1.EndpointSliceList
	if err := r.client.List(ctx, &list, client.InNamespace(cb.Namespace), client.MatchingFields{sliceServiceIndex: up.Name},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	return list.Items, nil
}

// refuse says in the conditions why cb cannot be served.
func (r *Reconciler) refuse(ctx context.Context, cb *cbv1.CircuitBreaker, status *cbv1.CircuitBreakerStatus, why *refusal) {
	status.Upstream = ""
	if ready := meta.FindStatusCondition(status.Conditions, cbv1.ConditionReady); ready == nil ||
		ready.Reason != why.reason || ready.Message != why.message || ready.ObservedGeneration != cb.Generation {
		ctrl.LoggerFrom(ctx).Info("breaker refused", "reason", why.reason, "message", why.message)
	}
	setRefused(status, cb.Generation, why)
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

// upstreamCABundle returns the ConfigMap of cb's
// spec.upstream.tls.caConfigMap, nil when there is none (or none named).
func (r *Reconciler) upstreamCABundle(ctx context.Context, cb *cbv1.CircuitBreaker) (*corev1.ConfigMap, error) {
	name := caConfigMapName(cb)
	if name == "" {
		return nil, nil
	}
	var cm corev1.ConfigMap
	if err := r.client.Get(ctx, types.NamespacedName{Namespace: cb.Namespace, Name: name}, &cm); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	return &cm, nil
}

// caConfigMapName is the name of the ConfigMap cb's upstream trusts, "" for none.
func caConfigMapName(cb *cbv1.CircuitBreaker) string {
	if t := cb.Spec.Upstream.TLS; t != nil && t.CAConfigMap != nil {
		return t.CAConfigMap.Name
	}
	return ""
}

// forget removes every trace of a deleted resource.
func (r *Reconciler) forget(key breaker.Key) {
	r.routes.Delete(key)
	r.registry.Delete(key)
	r.leaderStatus.forget(key)
	r.entries.forget(key)
	r.announced.Delete(key)
	r.refusedResets.Delete(key)
	r.serviceUsers.set(key, "")
}
