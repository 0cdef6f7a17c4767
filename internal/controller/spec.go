package controller

import (
	"crypto/x509"
	"fmt"
	"mime"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/httpurl"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

// Defaults of the spec, the same as the schema's, applied here too so that a
// resource stored before a default existed means what a new one means.
const (
	defaultRequestTimeout        = 10 * time.Second
	defaultStreamIdleTimeout     = 5 * time.Minute
	defaultMaxConcurrentRequests = 1024
	defaultFallbackStatusCode    = 503
	// DefaultClusterDomain is the cluster's DNS domain unless --cluster-domain says otherwise.
	DefaultClusterDomain = "cluster.local"
	// maxResetValue bounds the reset annotation's value, as a label value
	// is bounded: it is recorded in the status, Events and logs.
	maxResetValue = 253
)

var defaultFailureStatusCodes = []string{"5xx"}

// runtimeConfig is a CircuitBreaker's spec translated into the plain values
// the breaker and the proxy run with. translate is where a spec becomes
// runtime values; elsewhere only the name of the upstream's Service is read,
// to fetch and index the Service.
type runtimeConfig struct {
	settings breaker.Settings
	route    proxy.RouteConfig
}

// refusal says why a spec cannot be served: the Ready reason and a message
// for the user. A stalled refusal cannot end until the resource changes
// (Stalled=True, and the proxy answers 403); otherwise it ends by itself,
// e.g. when the missing Service appears (the proxy answers 503).
type refusal struct {
	reason, message string
	stalled         bool
}

// upstreamObjects are the objects a breaker's upstream names, as the
// cache holds them: nil (or none) when missing or not named.
type upstreamObjects struct {
	service *corev1.Service
	slices  []discoveryv1.EndpointSlice
	// caBundle is the ConfigMap of spec.upstream.tls.caConfigMap.
	caBundle *corev1.ConfigMap
}

// translate turns cb's spec into runtime values, with the objects its
// upstream names; pools holds the CA bundles parsed before. Everything is
// validated before anything is created, so a spec that cannot be served is
// refused whole, never half applied.
func translate(cb *cbv1.CircuitBreaker, objs upstreamObjects, pools *caPools, opts Options) (runtimeConfig, *refusal) {
	spec := &cb.Spec
	svc, slices := objs.service, objs.slices
	target, why := upstreamURL(cb, svc, opts)
	if why != nil {
		return runtimeConfig{}, why
	}
	codes := spec.FailureStatusCodes
	if len(codes) == 0 {
		codes = defaultFailureStatusCodes
	}
	failureCodes, err := proxy.ParseStatusCodes(codes)
	if err != nil {
		return runtimeConfig{}, &refusal{reason: ReasonInvalidSpec, message: "spec.failureStatusCodes: " + err.Error(), stalled: true}
	}
	cfg := runtimeConfig{
		// Zero values (a spec not yet defaulted) take the breaker's
		// defaults, which equal the schema's.
		settings: breaker.Settings{
			FailureThreshold:    uint32(max(spec.FailureThreshold, 0)),
			RecoveryTimeout:     durationOr(spec.RecoveryTimeout, 0),
			HalfOpenMaxRequests: uint32(max(spec.HalfOpenMaxRequests, 0)),
			SuccessThreshold:    uint32(max(spec.SuccessThreshold, 0)),
		},
		route: proxy.RouteConfig{
			Target:            target,
			GuardDial:         spec.Upstream.Service != nil,
			Timeout:           durationOr(spec.RequestTimeout, defaultRequestTimeout),
			StreamIdleTimeout: durationOr(spec.StreamIdleTimeout, defaultStreamIdleTimeout),
			MaxConcurrent:     int64(spec.MaxConcurrentRequests),
			FailureCodes:      failureCodes,
		},
	}
	var port *corev1.ServicePort
	if up := spec.Upstream.Service; up != nil {
		p, _ := servicePort(svc, up.Port) // upstreamURL found it
		port = &p
		cfg.route.Host = target.Host
		cfg.route.Endpoints = serviceEndpoints(slices, port.Name)
		cfg.route.Ejection = ejection(spec.EndpointEjection)
	}
	if cfg.route.H2C, why = speaksH2C(spec.Upstream.Protocol, target, port); why != nil {
		return runtimeConfig{}, why
	}
	if cfg.route.TLS, why = upstreamTLS(cb, target, objs.caBundle, pools); why != nil {
		return runtimeConfig{}, why
	}
	policy(spec, &cfg.settings)
	if cfg.route.MaxConcurrent <= 0 {
		cfg.route.MaxConcurrent = defaultMaxConcurrentRequests
	}
	if fb := spec.Fallback; fb != nil {
		status := int(fb.StatusCode)
		if status == 0 {
			status = defaultFallbackStatusCode
		}
		if fb.ContentType != "" {
			if _, _, err := mime.ParseMediaType(fb.ContentType); err != nil {
				return runtimeConfig{}, &refusal{reason: ReasonInvalidSpec, stalled: true,
					message: fmt.Sprintf("spec.fallback.contentType %q is not a media type: %v", fb.ContentType, err)}
			}
		}
		if len(fb.Body) > maxFallbackBody {
			return runtimeConfig{}, &refusal{reason: ReasonInvalidSpec, stalled: true,
				message: fmt.Sprintf("spec.fallback.body is %d bytes long: at most %d", len(fb.Body), maxFallbackBody)}
		}
		cfg.route.Fallback = &proxy.Fallback{StatusCode: status, ContentType: fb.ContentType, Body: []byte(fb.Body)}
	}
	return cfg, nil
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

// Defaults of spec.endpointEjection, the same as the schema's.
const (
	defaultEjectionFailures = 5
	defaultEjectionBase     = 30 * time.Second
	defaultEjectionMax      = 5 * time.Minute
	defaultEjectionPercent  = 50
)

// ejection translates spec.endpointEjection; nil when absent.
func ejection(e *cbv1.EndpointEjection) *proxy.Ejection {
	if e == nil {
		return nil
	}
	p := &proxy.Ejection{
		ConsecutiveFailures: uint32(max(e.ConsecutiveFailures, 0)),
		BaseTime:            durationOr(e.BaseEjectionTime, defaultEjectionBase),
		MaxTime:             durationOr(e.MaxEjectionTime, defaultEjectionMax),
		MaxPercent:          int(e.MaxEjectionPercent),
	}
	if p.ConsecutiveFailures == 0 {
		p.ConsecutiveFailures = defaultEjectionFailures
	}
	if p.MaxPercent <= 0 {
		p.MaxPercent = defaultEjectionPercent
	}
	p.MaxTime = max(p.MaxTime, p.BaseTime)
	return p
}

// Defaults of the policy fields, the same as the schema's.
const (
	defaultRateWindow      = 30 * time.Second
	defaultMinimumRequests = 20
	defaultMaxOpenDuration = 10 * time.Minute
)

// policy translates the rate rules, the open duration and the mode.
func policy(spec *cbv1.CircuitBreakerSpec, s *breaker.Settings) {
	if spec.FailureRate != nil || spec.SlowCall != nil {
		s.Window, s.MinimumRequests = defaultRateWindow, defaultMinimumRequests
	}
	if fr := spec.FailureRate; fr != nil {
		s.FailureRateThreshold = uint32(max(fr.Threshold, 0))
		s.Window = durationOr(fr.Window, defaultRateWindow)
		if fr.MinimumRequests > 0 {
			s.MinimumRequests = uint32(fr.MinimumRequests)
		}
		// failureThreshold: 0 leaves the rate rules alone.
		s.ConsecutiveRuleOff = spec.FailureThreshold == 0
	}
	if sc := spec.SlowCall; sc != nil {
		s.SlowCallDuration = sc.DurationThreshold.Duration
		s.SlowCallRateThreshold = uint32(max(sc.RateThreshold, 0))
	}
	if od := spec.OpenDuration; od != nil {
		s.OpenMultiplier = uint32(max(od.Multiplier, 1))
		s.MaxOpenDuration = durationOr(od.Max, defaultMaxOpenDuration)
		s.OpenJitter = uint32(max(od.Jitter, 0))
		s.HonorRetryAfter = od.HonorRetryAfter
	}
	s.Mode = modes[spec.Mode]
}

// maxFallbackBody is the schema's bound, checked again for resources stored
// before it was lowered.
const maxFallbackBody = 8 << 10

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

// resetRequest is the reset the annotation asks for: its value, and why it
// is refused (empty when it is not).
func resetRequest(cb *cbv1.CircuitBreaker) (value, refused string) {
	value = cb.Annotations[cbv1.ResetAnnotation]
	if len(value) > maxResetValue {
		return value, fmt.Sprintf("reset refused: the value of %s is %d characters long, at most %d are accepted",
			cbv1.ResetAnnotation, len(value), maxResetValue)
	}
	return value, ""
}

// maxShownResetValue bounds the reset value as Events, history and
// webhooks show it.
const maxShownResetValue = 64

// shownResetValue is the reset annotation's value as Events, history and
// webhooks show it: letters, digits, '-' and '_' kept, anything else '_',
// at most maxShownResetValue characters ("..." after), so that no chat that
// receives the webhook renders a link or a mention from it. The value
// itself (lastHandledReset) is kept as written.
func shownResetValue(value string) string {
	var b strings.Builder
	for i, r := range value {
		if i >= maxShownResetValue {
			b.WriteString("...")
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

func durationOr(d *metav1.Duration, fallback time.Duration) time.Duration {
	if d == nil || d.Duration <= 0 {
		return fallback
	}
	return d.Duration
}

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
