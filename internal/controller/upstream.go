package controller

import (
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/httpurl"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

// upstreamURL returns the URL calls are forwarded to, or why there is none.
// A Service upstream is dialled by its fully qualified name (trailing dot),
// so no DNS search path can capture it, and only while the Service exists
// and is not an ExternalName (which could aim the proxy anywhere).
func upstreamURL(cb *cbv1.CircuitBreaker, svc *corev1.Service, opts Options) (*url.URL, *refusal) {
	up := cb.Spec.Upstream
	switch {
	case up.Service != nil && up.URL == "":
		if svc == nil {
			return nil, &refusal{reason: ReasonServiceNotFound,
				message: fmt.Sprintf("Service %s/%s not found: calls are answered 503 until it exists", cb.Namespace, up.Service.Name)}
		}
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			return nil, &refusal{reason: ReasonUpstreamNotAllowed, stalled: true,
				message: fmt.Sprintf("Service %s/%s is an ExternalName Service: the proxy forwards only to Services in the cluster", cb.Namespace, up.Service.Name)}
		}
		scheme := up.Service.Scheme
		if scheme == "" {
			scheme = "http"
		}
		port, ok := servicePort(svc, up.Service.Port)
		if !ok {
			return nil, &refusal{reason: ReasonPortNotFound,
				message: fmt.Sprintf("Service %s/%s has no TCP port %s: calls are answered 503 until it has", cb.Namespace, up.Service.Name, up.Service.Port.String())}
		}
		domain := strings.Trim(opts.ClusterDomain, ".")
		if domain == "" {
			domain = DefaultClusterDomain
		}
		// Calls are dialled at the endpoints' addresses; this names them
		// (the Host header, the status).
		host := serviceDNSName(up.Service.Name, cb.Namespace, domain)
		return &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(int(port.Port)))}, nil
	case up.URL != "" && up.Service == nil:
		if !opts.AllowURLUpstreams {
			return nil, &refusal{reason: ReasonUpstreamNotAllowed, stalled: true,
				message: "spec.upstream.url is refused: the manager runs without --allow-url-upstreams"}
		}
		u, err := httpurl.Parse(up.URL)
		if err != nil {
			return nil, &refusal{reason: ReasonInvalidUpstream, stalled: true, message: "spec.upstream.url " + err.Error()}
		}
		return u, nil
	}
	return nil, &refusal{reason: ReasonInvalidUpstream, stalled: true, message: "spec.upstream needs exactly one of service or url"}
}

// h2cAppProtocols are the Service port appProtocols spoken to in h2c:
// Kubernetes' own name for HTTP/2 with prior knowledge, and gRPC, whose
// servers speak it when they have no TLS.
var h2cAppProtocols = map[string]bool{"kubernetes.io/h2c": true, "grpc": true}

// speaksH2C says whether calls to target go as h2c: spec.upstream.protocol
// says so, or the Service port's appProtocol (port is nil for a URL
// upstream). An https upstream negotiates its protocol by ALPN: h2c is
// refused there, and the port's appProtocol does not apply.
func speaksH2C(protocol string, target *url.URL, port *corev1.ServicePort) (bool, *refusal) {
	if target.Scheme != "http" {
		if protocol == cbv1.ProtocolH2C {
			return false, &refusal{reason: ReasonInvalidSpec, stalled: true,
				message: "spec.upstream.protocol h2c is HTTP/2 without TLS: it needs an http upstream (an https one negotiates HTTP/2 by ALPN)"}
		}
		return false, nil
	}
	return protocol == cbv1.ProtocolH2C || port != nil && h2cAppProtocols[ptr.Deref(port.AppProtocol, "")], nil
}

// defaultCAKey is the key of spec.upstream.tls.caConfigMap by default, the
// schema's: the key of the kube-root-ca.crt ConfigMap every namespace has,
// and of cert-manager's CA certificates.
const defaultCAKey = "ca.crt"

// upstreamTLS is whom an https upstream is trusted as: the PEM bundle of
// spec.upstream.tls.caConfigMap (bundle is that ConfigMap, nil when
// missing), else the system's roots; for tls.serverName, else a Service
// upstream's <name>.<namespace>.svc (it is dialled at its endpoints'
// addresses, which no certificate names) or a URL's host. Nil for an http
// upstream, and for an https URL upstream without tls (the shared
// transport's trust).
func upstreamTLS(cb *cbv1.CircuitBreaker, target *url.URL, bundle *corev1.ConfigMap, pools *caPools) (*proxy.UpstreamTLS, *refusal) {
	up := cb.Spec.Upstream
	if target.Scheme != "https" || up.TLS == nil && up.Service == nil {
		return nil, nil
	}
	trust := &proxy.UpstreamTLS{}
	if up.TLS != nil {
		trust.ServerName = up.TLS.ServerName
	}
	if trust.ServerName == "" && up.Service != nil {
		trust.ServerName = up.Service.Name + "." + cb.Namespace + ".svc"
	}
	if up.TLS == nil || up.TLS.CAConfigMap == nil {
		return trust, nil
	}
	ref := up.TLS.CAConfigMap
	key := ref.Key
	if key == "" {
		key = defaultCAKey
	}
	if bundle == nil {
		pools.forget(cb.Namespace, ref.Name)
		return nil, &refusal{reason: ReasonCAConfigMapNotFound,
			message: fmt.Sprintf("ConfigMap %s/%s (spec.upstream.tls.caConfigMap) not found: calls are answered 503 until it exists", cb.Namespace, ref.Name)}
	}
	if trust.RootCAs = pools.get(bundle, key); trust.RootCAs == nil {
		return nil, &refusal{reason: ReasonCABundleInvalid,
			message: fmt.Sprintf("ConfigMap %s/%s has no PEM certificate under key %q (spec.upstream.tls.caConfigMap): calls are answered 503 until it has",
				cb.Namespace, ref.Name, key)}
	}
	return trust, nil
}

// caPools holds the CA bundles parsed from ConfigMaps, by ConfigMap and
// key, for as long as the ConfigMap keeps its resource version: a
// reconcile (once a second for a busy breaker) does not parse a bundle of
// a hundred certificates again, and the breakers that name one ConfigMap
// share one pool (and their routes keep their connections, the pool being
// the same). An entry goes when a breaker finds its ConfigMap gone.
type caPools struct {
	mu    sync.Mutex
	pools map[caKey]caPool
}

type caKey struct{ namespace, name, key string }

type caPool struct {
	uid             types.UID
	resourceVersion string
	pool            *x509.CertPool // nil: no certificate under the key
}

// get returns the pool of the certificates under key in cm, nil when it
// has none.
func (p *caPools) get(cm *corev1.ConfigMap, key string) *x509.CertPool {
	k := caKey{cm.Namespace, cm.Name, key}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.pools[k]; ok && c.uid == cm.UID && c.resourceVersion == cm.ResourceVersion && cm.ResourceVersion != "" {
		return c.pool
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data[key])) {
		pool = nil
	}
	if p.pools == nil {
		p.pools = map[caKey]caPool{}
	}
	p.pools[k] = caPool{uid: cm.UID, resourceVersion: cm.ResourceVersion, pool: pool}
	return pool
}

// forget drops the pools of a ConfigMap that is gone.
func (p *caPools) forget(namespace, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.pools {
		if k.namespace == namespace && k.name == name {
			delete(p.pools, k)
		}
	}
}

// serviceEndpoints is the endpoints rule, kube-proxy's: of the slices of a
// Service, the endpoints at the slice port named as the Service's port
// (each slice's own number), deduplicated by address and port; the ready
// ones, or, when none is, the serving and terminating ones. A nil
// condition reads as ready and serving, not terminating. Only IPv4 and
// IPv6 slices count, and an endpoint's first address.
func serviceEndpoints(slices []discoveryv1.EndpointSlice, portName string) []proxy.Endpoint {
	seen := map[netip.AddrPort]bool{}
	var ready, fallback []proxy.Endpoint
	for i := range slices {
		slice := &slices[i]
		if slice.AddressType != discoveryv1.AddressTypeIPv4 && slice.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		var port int32
		for _, p := range slice.Ports {
			if p.Port != nil && ptr.Deref(p.Name, "") == portName && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
				port = *p.Port
				break
			}
		}
		if port <= 0 || port > 65535 {
			continue
		}
		for _, e := range slice.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			addr, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				continue
			}
			ap := netip.AddrPortFrom(addr.Unmap(), uint16(port))
			if seen[ap] {
				continue
			}
			seen[ap] = true
			ep := proxy.Endpoint{Addr: ap}
			if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
				ep.Pod = e.TargetRef.Name
			}
			c := e.Conditions
			isReady := c.Ready == nil || *c.Ready
			serving := c.Serving == nil || *c.Serving
			terminating := c.Terminating != nil && *c.Terminating
			switch {
			case isReady:
				ready = append(ready, ep)
			case serving && terminating:
				fallback = append(fallback, ep)
			}
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return fallback
}

// servicePort is the port of svc that port names (a number or a name).
func servicePort(svc *corev1.Service, port intstr.IntOrString) (corev1.ServicePort, bool) {
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if port.Type == intstr.Int && p.Port == port.IntVal || port.Type == intstr.String && p.Name == port.StrVal {
			return p, true
		}
	}
	return corev1.ServicePort{}, false
}
