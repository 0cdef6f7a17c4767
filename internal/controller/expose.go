package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// Exposed condition reasons.
const (
	// ReasonServiceOwned: the exposed Service is the operator's and routes here.
	ReasonServiceOwned = "ServiceOwned"
	// ReasonServiceConflict: a Service of that name exists and is not this
	// breaker's; it is left alone.
	ReasonServiceConflict = "ServiceConflict"
	// ReasonInvalidServiceName: the default name, <metadata.name>-breaker,
	// is not a valid Service name; spec.expose.serviceName must give one.
	ReasonInvalidServiceName = "InvalidServiceName"
	// ReasonServicePending: the Service is being made.
	ReasonServicePending = "ServicePending"
)

// DefaultProxyService is the proxy Service's name in the install.
const DefaultProxyService = "circuit-breaker-operator-proxy"

// ownerIndex indexes Services by the CircuitBreaker that controls them.
const ownerIndex = "metadata.controller.circuitbreaker"

// ownerOf returns the name of the CircuitBreaker that controls o ("" when none).
func ownerOf(o client.Object) (name string, uid types.UID) {
	ref := metav1.GetControllerOfNoCopy(o)
	if ref == nil || ref.Kind != "CircuitBreaker" || ref.APIVersion != cbv1.GroupVersion.String() {
		return "", ""
	}
	return ref.Name, ref.UID
}

// exposedServiceName is the Service cb asks to be exposed as ("" without spec.expose).
func exposedServiceName(cb *cbv1.CircuitBreaker) string {
	switch {
	case cb.Spec.Expose == nil:
		return ""
	case cb.Spec.Expose.ServiceName != "":
		return cb.Spec.Expose.ServiceName
	default:
		return cb.Name + "-breaker"
	}
}

// proxyTarget is the DNS name every exposed Service points at: the proxy's own Service.
func (r *Reconciler) proxyTarget() string {
	return serviceDNSName(r.opts.ProxyService.Name, r.opts.ProxyService.Namespace, r.opts.ClusterDomain)
}

// expose keeps the Service spec.expose asks for (the leader makes, fixes
// and removes it; the garbage collector removes it with the breaker) and,
// on every replica, routes its Host to key while the Service is this
// breaker's. The Exposed condition, status.exposedAs and a Warning Event
// on a conflict say how it went.
func (r *Reconciler) expose(ctx context.Context, cb *cbv1.CircuitBreaker, key breaker.Key, base, status *cbv1.CircuitBreakerStatus) error {
	name := exposedServiceName(cb)
	// A breaker that is not exposed, and was not as far as its status
	// says, has no Service to remove: no lookup (the common case).
	wasExposed := base.ExposedAs != "" || meta.FindStatusCondition(base.Conditions, cbv1.ConditionExposed) != nil
	if r.leading() && (name != "" || wasExposed) {
		if err := r.removeExposed(ctx, cb, name); err != nil {
			return err
		}
	}
	if name == "" {
		r.routes.Expose(key, "")
		status.ExposedAs = ""
		meta.RemoveStatusCondition(&status.Conditions, cbv1.ConditionExposed)
		return nil
	}
	setExposed := func(ok bool, reason, message string) {
		condition := metav1.Condition{Type: cbv1.ConditionExposed, Status: metav1.ConditionFalse, Reason: reason, Message: message, ObservedGeneration: cb.Generation}
		status.ExposedAs = ""
		if ok {
			condition.Status = metav1.ConditionTrue
			status.ExposedAs = serviceDNSName(name, cb.Namespace, r.opts.ClusterDomain)
			r.routes.Expose(key, name)
		} else {
			r.routes.Expose(key, "")
		}
		meta.SetStatusCondition(&status.Conditions, condition)
	}
	if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
		setExposed(false, ReasonInvalidServiceName, "cannot expose as Service "+name+": "+errs[0]+"; set spec.expose.serviceName")
		return nil
	}

	var svc corev1.Service
	err := r.client.Get(ctx, types.NamespacedName{Namespace: cb.Namespace, Name: name}, &svc)
	switch {
	case apierrors.IsNotFound(err):
		if !r.leading() {
			setExposed(false, ReasonServicePending, "Service "+name+" is being made")
			return nil
		}
		desired := r.exposedService(cb, name)
		if err := r.client.Create(ctx, desired); err != nil {
			return err // AlreadyExists included: the cache will show whose it is
		}
		ctrl.LoggerFrom(ctx).Info("exposed", "service", name, "target", desired.Spec.ExternalName)
		setExposed(true, ReasonServiceOwned, "callers reach this breaker as "+name+"."+cb.Namespace)
		return nil
	case err != nil:
		return err
	}

	if owner, uid := ownerOf(&svc); owner != cb.Name || uid != cb.UID {
		message := "Service " + name + " exists and is not this breaker's: it is left alone"
		if was := meta.FindStatusCondition(base.Conditions, cbv1.ConditionExposed); was == nil || was.Reason != ReasonServiceConflict {
			ctrl.LoggerFrom(ctx).Info("expose refused", "service", name, "reason", ReasonServiceConflict)
			r.event(cb, corev1.EventTypeWarning, ReasonServiceConflict, "Expose", message+"; choose another spec.expose.serviceName")
		}
		setExposed(false, ReasonServiceConflict, message)
		return nil
	}
	if target := r.proxyTarget(); svc.Spec.Type != corev1.ServiceTypeExternalName || svc.Spec.ExternalName != target {
		if !r.leading() {
			setExposed(false, ReasonServicePending, "Service "+name+" is being pointed at "+target)
			return nil
		}
		// Ours, pointing elsewhere (--proxy-service changed): point it
		// here, unless it changed since the cache saw it.
		patch := client.MergeFromWithOptions(svc.DeepCopy(), client.MergeFromWithOptimisticLock{})
		svc.Spec.Type, svc.Spec.ExternalName = corev1.ServiceTypeExternalName, target
		if err := r.client.Patch(ctx, &svc, patch); err != nil {
			return err
		}
		ctrl.LoggerFrom(ctx).Info("exposed", "service", name, "target", target)
	}
	setExposed(true, ReasonServiceOwned, "callers reach this breaker as "+name+"."+cb.Namespace)
	return nil
}

// exposedService is the Service that exposes cb as name: an ExternalName
// Service pointing at the proxy's, controlled by cb so that the garbage
// collector deletes it with cb. It does not block cb's deletion (which
// would need the update permission on circuitbreakers/finalizers).
func (r *Reconciler) exposedService(cb *cbv1.CircuitBreaker, name string) *corev1.Service {
	owner := metav1.NewControllerRef(cb, cbv1.GroupVersion.WithKind("CircuitBreaker"))
	owner.BlockOwnerDeletion = nil
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: cb.Namespace, Name: name,
			Labels:          map[string]string{"app.kubernetes.io/managed-by": "circuit-breaker-operator"},
			OwnerReferences: []metav1.OwnerReference{*owner},
		},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: r.proxyTarget()},
	}
}

// removeExposed deletes the Services cb controls other than keep (a
// renamed or removed spec.expose), each only while it is still the one
// the cache saw.
func (r *Reconciler) removeExposed(ctx context.Context, cb *cbv1.CircuitBreaker, keep string) error {
	var list corev1.ServiceList
	if err := r.client.List(ctx, &list, client.InNamespace(cb.Namespace), client.MatchingFields{ownerIndex: cb.Name}); err != nil {
		return err
	}
	for i := range list.Items {
		svc := &list.Items[i]
		if _, uid := ownerOf(svc); uid != cb.UID || svc.Name == keep {
			continue
		}
		err := r.client.Delete(ctx, svc, client.Preconditions{UID: &svc.UID, ResourceVersion: &svc.ResourceVersion})
		if client.IgnoreNotFound(err) != nil {
			return err
		}
		ctrl.LoggerFrom(ctx).Info("exposure removed", "service", svc.Name)
	}
	return nil
}
