package controller

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

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
		r.enqueueBackground(key)
	}
	ctrl.LoggerFrom(ctx).Info("routed every CircuitBreaker", "count", len(list.Items))
}

// everyReplica is a manager Runnable that runs on every replica, not only
// the leader.
type everyReplica func(ctx context.Context)

func (f everyReplica) Start(ctx context.Context) error { f(ctx); return nil }
func (everyReplica) NeedLeaderElection() bool          { return false }

// breakersWhere are the breakers of namespace that index field says have
// value, as requests; what names them is for the log (e.g. "Service").
func (r *Reconciler) breakersWhere(ctx context.Context, namespace, field, value, what string) []reconcile.Request {
	var list cbv1.CircuitBreakerList
	if err := r.client.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{field: value}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing the breakers of a "+what, "namespace", namespace, "name", value)
		return nil
	}
	requests := make([]reconcile.Request, 0, len(list.Items))
	for _, cb := range list.Items {
		requests = append(requests, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&cb)})
	}
	return requests
}

// breakersOfService maps a Service to the breakers that name it as their
// upstream, and to the breaker exposed as it (spec.expose) or that
// controls it.
func (r *Reconciler) breakersOfService(ctx context.Context, svc client.Object) []reconcile.Request {
	requests := append(r.serviceUsers.breakers(svc.GetNamespace(), svc.GetName()),
		r.breakersWhere(ctx, svc.GetNamespace(), exposeIndex, svc.GetName(), "Service")...)
	if owner, _ := ownerOf(svc); owner != "" {
		requests = append(requests, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: svc.GetNamespace(), Name: owner}})
	}
	return requests
}

// exposeIndex indexes CircuitBreakers by the Service they are exposed as.
const exposeIndex = "spec.expose.serviceName"

// caConfigMapIndex indexes CircuitBreakers by the ConfigMap their
// upstream's CA bundle is in.
const caConfigMapIndex = "spec.upstream.tls.caConfigMap.name"

// breakersOfConfigMap maps a ConfigMap to the breakers that trust its bundle.
func (r *Reconciler) breakersOfConfigMap(ctx context.Context, cm client.Object) []reconcile.Request {
	return r.breakersWhere(ctx, cm.GetNamespace(), caConfigMapIndex, cm.GetName(), "ConfigMap")
}

// breakersOfSlice maps an EndpointSlice to the breakers of its Service.
func (r *Reconciler) breakersOfSlice(ctx context.Context, slice client.Object) []reconcile.Request {
	name := slice.GetLabels()[discoveryv1.LabelServiceName]
	if name == "" {
		return nil
	}
	svc := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: slice.GetNamespace(), Name: name}}
	return r.breakersOfService(ctx, svc)
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

// indexOne indexes obj's kind by field, whose value for an object is one
// string ("" for none), within the object's namespace: every lookup here
// lists one namespace. controller-runtime's IndexField also files each
// object under an all-namespaces key, a second set per value, which nothing
// here would read (at 10,000 Services, about 2.5 MiB for the slices' index).
// The key is the one its cache reader asks for (namespace/value, under
// "field:"+field), so client.MatchingFields with client.InNamespace lists
// through it.
func indexOne(ctx context.Context, c cache.Cache, obj client.Object, field string, value func(client.Object) string) error {
	informer, err := c.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
	if err != nil {
		return err
	}
	return informer.AddIndexers(toolscache.Indexers{"field:" + field: func(o any) ([]string, error) {
		obj, ok := o.(client.Object)
		if !ok {
			return nil, nil
		}
		if v := value(obj); v != "" {
			return []string{obj.GetNamespace() + "/" + v}, nil
		}
		return nil, nil
	}})
}

// RetryLimiter paces the retries of failed reconciles (an API server that
// went away): each breaker backs off on its own from 5 ms to
// maxRetryDelay, so every failed status write is retried at least every
// 5 s however many breakers failed at once. There is no shared token
// bucket (controller-runtime's default has one of 10/s, burst 100): with
// 10,000 failures at once, its last retry would wait about 16 minutes.
// The API server protects itself (API Priority and Fairness), as
// controller-runtime expects, whose client has no rate limit of its own.
func RetryLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, maxRetryDelay)
}

func (r *Reconciler) enqueue(key breaker.Key) { r.enqueueAt(key, nil) }

// Queued is how many breakers wait to be reconciled now (not counting those
// requeued for later); 1 before the controller has started.
func (r *Reconciler) Queued() int {
	q := r.queue.Load()
	if q == nil {
		return 1
	}
	return (*q).Len()
}

// decisionPriority puts a breaker whose state just changed, on this replica
// or another, ahead of every other reconcile: the transition's write (or
// the following of another replica's) must not wait behind hundreds of
// count updates and fleet views, as after a replica starts with many
// breakers, when each of them owes a write at the API server's pace.
const decisionPriority = 100

// enqueueDecision enqueues key at decisionPriority; one already queued is
// moved up.
func (r *Reconciler) enqueueDecision(key breaker.Key) { r.enqueueAt(key, ptr.To(decisionPriority)) }

// enqueueBackground enqueues key behind everything that happens now: the
// sweeps over every breaker (a replica starting, a leader elected) must not
// delay a breaker just created, or a transition, behind thousands of
// unchanged ones (the queue's initial listing is low priority likewise).
func (r *Reconciler) enqueueBackground(key breaker.Key) {
	r.enqueueAt(key, ptr.To(handler.LowPriority))
}

// enqueueAt enqueues key at priority (nil: the default, 0).
func (r *Reconciler) enqueueAt(key breaker.Key, priority *int) {
	q := r.queue.Load()
	if q == nil {
		return
	}
	namespace, name := key.Split()
	req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: namespace, Name: name}}
	if pq, ok := (*q).(priorityqueue.PriorityQueue[reconcile.Request]); ok && priority != nil {
		pq.AddWithOpts(priorityqueue.AddOpts{Priority: priority}, req)
		return
	}
	(*q).Add(req)
}

// writtenCaughtUp hands every update of a breaker to the status writer,
// which drops its copy of a write once the cache shows it.
func (r *Reconciler) writtenCaughtUp(_ context.Context, e event.UpdateEvent, _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	r.leaderStatus.caughtUp(e.ObjectNew.(*cbv1.CircuitBreaker))
}

// othersDecided enqueues, at decisionPriority, a breaker whose status shows
// another replica's new transition: a decision this replica follows. A
// transition is new when it is later than every transition the status
// showed before: a starting replica's first entry restores the decision the
// fleet already made (the same time), which changes nothing to follow and
// must not jump the queue, hundreds of them at once, ahead of a real one.
// The For watch enqueues every such change at the default priority; the
// queue keeps one item, at the higher.
func (r *Reconciler) othersDecided() handler.TypedEventHandler[client.Object, reconcile.Request] {
	self := r.opts.Fleet.Self()
	return handler.Funcs{UpdateFunc: func(_ context.Context, e event.UpdateEvent, _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		var newest *metav1.MicroTime
		for _, entry := range e.ObjectOld.(*cbv1.CircuitBreaker).Status.Replicas {
			if t := entry.LastTransitionTime; t != nil && (newest == nil || newest.Before(t)) {
				newest = t
			}
		}
		for _, entry := range e.ObjectNew.(*cbv1.CircuitBreaker).Status.Replicas {
			if entry.Name == self || entry.LastTransitionTime == nil {
				continue
			}
			if newest == nil || newest.Before(entry.LastTransitionTime) {
				r.enqueueDecision(breaker.NewKey(e.ObjectNew.GetNamespace(), e.ObjectNew.GetName()))
				return
			}
		}
	}}
}

// SetupWithManager registers the controller on every replica, subscribes it
// to the registry's changes, and adds the leader's work: on election, write
// every breaker's state as this replica sees it, then flush count changes.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.registry.OnTransition(func(key breaker.Key, _ breaker.Transition) { r.enqueueDecision(key) })
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
			r.enqueueBackground(key)
		}
	})
	ctx := context.Background()
	breakerIndexes := map[string]func(*cbv1.CircuitBreaker) string{
		exposeIndex:      exposedServiceName,
		caConfigMapIndex: caConfigMapName,
	}
	for field, value := range breakerIndexes {
		if err := indexOne(ctx, mgr.GetCache(), &cbv1.CircuitBreaker{}, field, func(o client.Object) string { return value(o.(*cbv1.CircuitBreaker)) }); err != nil {
			return err
		}
	}
	if err := indexOne(ctx, mgr.GetCache(), &corev1.Service{}, ownerIndex, func(o client.Object) string {
		owner, _ := ownerOf(o)
		return owner
	}); err != nil {
		return err
	}
	if err := indexOne(ctx, mgr.GetCache(), &discoveryv1.EndpointSlice{}, sliceServiceIndex, func(o client.Object) string {
		return o.GetLabels()[discoveryv1.LabelServiceName]
	}); err != nil {
		return err
	}
	// Listed across namespaces (ReplicaGone): IndexField's all-namespaces key.
	if err := mgr.GetFieldIndexer().IndexField(ctx, &cbv1.CircuitBreaker{}, replicaIndex, func(o client.Object) []string {
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
		// Of those, another replica's transition goes ahead of the rest.
		Watches(&cbv1.CircuitBreaker{}, r.othersDecided()).
		// The status writer's copy of a write goes once the cache has it.
		Watches(&cbv1.CircuitBreaker{}, handler.Funcs{UpdateFunc: r.writtenCaughtUp}).
		// A Service appearing, going or changing its type changes what the
		// breakers that name it may do, and whether one is exposed.
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.breakersOfService)).
		// Its endpoints changing changes where the calls go, and whether
		// there is anywhere at all.
		Watches(&discoveryv1.EndpointSlice{}, handler.EnqueueRequestsFromMapFunc(r.breakersOfSlice)).
		// The CA bundle changing changes whom the upstream is trusted as.
		Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.breakersOfConfigMap)).
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
			RateLimiter:        RetryLimiter(),
		}).
		Complete(r)
}
