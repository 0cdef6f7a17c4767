package controller

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrimService is the cache's transform for Services: an upstream needs a
// Service's identity, type and ports, not its annotations, labels or
// managed fields, and a cluster may have many Services.
func TrimService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	return &corev1.Service{
		TypeMeta: svc.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace, Name: svc.Name, UID: svc.UID, ResourceVersion: svc.ResourceVersion,
			Generation: svc.Generation, DeletionTimestamp: svc.DeletionTimestamp,
			OwnerReferences: svc.OwnerReferences, // whose exposed Service it is
		},
		Spec: corev1.ServiceSpec{Type: svc.Spec.Type, Ports: svc.Spec.Ports, ExternalName: svc.Spec.ExternalName},
	}, nil
}

// pemCertificate begins a PEM certificate block.
const pemCertificate = "-----BEGIN CERTIFICATE-----"

// TrimConfigMap is the cache's transform for ConfigMaps: of each, its
// identity and the data entries that hold a PEM certificate, which is all
// spec.upstream.tls.caConfigMap reads. A cluster's ConfigMaps hold every
// application's configuration, none of which the manager keeps.
func TrimConfigMap(obj any) (any, error) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return obj, nil
	}
	trimmed := &corev1.ConfigMap{
		TypeMeta: cm.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Namespace: cm.Namespace, Name: cm.Name, UID: cm.UID, ResourceVersion: cm.ResourceVersion,
			DeletionTimestamp: cm.DeletionTimestamp,
		},
	}
	for k, v := range cm.Data {
		if strings.Contains(v, pemCertificate) {
			if trimmed.Data == nil {
				trimmed.Data = map[string]string{}
			}
			trimmed.Data[k] = v
		}
	}
	return trimmed, nil
}

// TrimEndpointSlice is the cache's transform for EndpointSlices: of each,
// what the endpoints rules read (addresses, conditions, the Pod's name,
// the ports), and the label that names its Service.
func TrimEndpointSlice(obj any) (any, error) {
	slice, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	trimmed := &discoveryv1.EndpointSlice{
		TypeMeta: slice.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Namespace: slice.Namespace, Name: slice.Name, UID: slice.UID, ResourceVersion: slice.ResourceVersion,
			Labels: map[string]string{discoveryv1.LabelServiceName: slice.Labels[discoveryv1.LabelServiceName]},
		},
		AddressType: slice.AddressType,
		Ports:       slice.Ports,
		Endpoints:   make([]discoveryv1.Endpoint, len(slice.Endpoints)),
	}
	for i, e := range slice.Endpoints {
		trimmed.Endpoints[i] = discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions}
		if ref := e.TargetRef; ref != nil && ref.Kind == "Pod" {
			trimmed.Endpoints[i].TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: ref.Name}
		}
	}
	return trimmed, nil
}
