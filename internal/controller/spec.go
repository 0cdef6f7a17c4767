package controller

import (
	"fmt"
	"mime"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
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
