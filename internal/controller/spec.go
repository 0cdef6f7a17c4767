package controller

import (
	"fmt"
	"net/url"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

// Defaults of the spec, the same as the schema's, applied here too so that a
// resource stored before a default existed means what a new one means.
const (
	defaultRequestTimeout     = 10 * time.Second
	defaultFallbackStatusCode = 503
)

var defaultFailureStatusCodes = []string{"5xx"}

// runtimeConfig is a CircuitBreaker's spec translated into the plain values
// the breaker and the proxy run with. This file is the only place a spec is
// read.
type runtimeConfig struct {
	settings breaker.Settings
	route    proxy.RouteConfig
}

// refusal says why a spec cannot be served: the Ready and Stalled reason,
// and a message for the user.
type refusal struct {
	reason, message string
}

// translate turns cb's spec into runtime values. Everything is validated
// before anything is created, so a spec that cannot be served is refused
// whole, never half applied.
func translate(cb *cbv1.CircuitBreaker, opts Options) (runtimeConfig, *refusal) {
	spec := &cb.Spec
	target, why := upstreamURL(cb, opts)
	if why != nil {
		return runtimeConfig{}, why
	}
	codes := spec.FailureStatusCodes
	if len(codes) == 0 {
		codes = defaultFailureStatusCodes
	}
	failureCodes, err := proxy.ParseStatusCodes(codes)
	if err != nil {
		return runtimeConfig{}, &refusal{ReasonInvalidSpec, "spec.failureStatusCodes: " + err.Error()}
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
			Target:       target,
			Timeout:      durationOr(spec.RequestTimeout, defaultRequestTimeout),
			FailureCodes: failureCodes,
		},
	}
	if fb := spec.Fallback; fb != nil {
		status := int(fb.StatusCode)
		if status == 0 {
			status = defaultFallbackStatusCode
		}
		cfg.route.Fallback = &proxy.Fallback{StatusCode: status, ContentType: fb.ContentType, Body: []byte(fb.Body)}
	}
	return cfg, nil
}

// upstreamURL returns the URL calls are forwarded to, or why there is none.
func upstreamURL(cb *cbv1.CircuitBreaker, opts Options) (*url.URL, *refusal) {
	up := cb.Spec.Upstream
	switch {
	case up.Service != nil && up.URL == "":
		scheme := up.Service.Scheme
		if scheme == "" {
			scheme = "http"
		}
		return &url.URL{Scheme: scheme, Host: fmt.Sprintf("%s.%s.svc:%d", up.Service.Name, cb.Namespace, up.Service.Port)}, nil
	case up.URL != "" && up.Service == nil:
		if !opts.AllowURLUpstreams {
			return nil, &refusal{ReasonUpstreamNotAllowed, "spec.upstream.url is refused: the manager runs without --allow-url-upstreams"}
		}
		u, err := url.Parse(up.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, &refusal{ReasonInvalidUpstream, fmt.Sprintf("spec.upstream.url %q is not an absolute http(s) URL", up.URL)}
		}
		return u, nil
	}
	return nil, &refusal{ReasonInvalidUpstream, "spec.upstream needs exactly one of service or url"}
}

func durationOr(d *metav1.Duration, fallback time.Duration) time.Duration {
	if d == nil || d.Duration <= 0 {
		return fallback
	}
	return d.Duration
}
