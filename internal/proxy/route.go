package proxy

import (
	"crypto/x509"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
)

// RouteConfig is everything the proxy needs to forward one breaker's calls.
// Every field is required: defaults are the controller's business.
type RouteConfig struct {
	// Target is the upstream's base URL; the rest of the caller's path is appended.
	Target *url.URL
	// GuardDial refuses to dial loopback, link-local, unspecified, multicast
	// and the manager's own addresses (Service upstreams).
	GuardDial bool
	// Timeout bounds the wait for the upstream's response headers; a
	// timeout is a failure.
	Timeout time.Duration
	// StreamIdleTimeout ends a streaming response or upgraded connection
	// after no byte went either way for this long (no verdict).
	StreamIdleTimeout time.Duration
	// MaxConcurrent is how many calls may be in flight at once; beyond it
	// callers get 503 saturated (no verdict).
	MaxConcurrent int64
	// FailureCodes are the upstream answers that count as failures.
	FailureCodes StatusCodes
	// Fallback, when set, is served while the circuit rejects calls;
	// otherwise callers get 503 with a JSON error.
	Fallback *Fallback
	// Host, when set, makes this a Service upstream's route: each call
	// goes to one of Endpoints (dialled by address, balanced per call),
	// with Host as its Host header; Target gives the scheme and base path.
	Host      string
	Endpoints []Endpoint
	// Ejection, when set, takes failing endpoints out for a while.
	Ejection *Ejection
	// H2C speaks HTTP/2 with prior knowledge, without TLS, to the
	// upstream (an http one); otherwise HTTP/1.1, or for https what ALPN
	// agrees.
	H2C bool
	// TLS, when set, is how an https upstream's certificate is verified;
	// otherwise against the system's roots, for the URL's host.
	TLS *UpstreamTLS
}

// UpstreamTLS is whom an https upstream is trusted as.
type UpstreamTLS struct {
	// RootCAs verify the upstream's certificate; nil: the system's roots.
	RootCAs *x509.CertPool
	// ServerName is the name the certificate must be valid for (and the
	// SNI sent); "": the URL's host.
	ServerName string
}

// sameTransport reports whether a and b's calls may share connections:
// the same protocol and the same trust. A route reconfigured otherwise
// gets new connection pools.
func sameTransport(a, b *RouteConfig) bool {
	if a.H2C != b.H2C || (a.TLS == nil) != (b.TLS == nil) || a.http1() != b.http1() {
		return false
	}
	if a.TLS == nil {
		return true
	}
	return a.TLS.ServerName == b.TLS.ServerName &&
		(a.TLS.RootCAs == b.TLS.RootCAs || a.TLS.RootCAs != nil && a.TLS.RootCAs.Equal(b.TLS.RootCAs))
}

// ownTransport reports whether a URL upstream's route has connections of
// its own, not the shared transport's (which speaks HTTP/1.1 or ALPN to
// https upstreams and trusts the system's roots).
func (c *RouteConfig) ownTransport() bool { return c.H2C || c.TLS != nil || c.http1() }

// http1 reports whether the route's upstream speaks HTTP/1.1 without TLS,
// through the lean client (http1.go).
func (c *RouteConfig) http1() bool {
	return !c.H2C && c.Target != nil && c.Target.Scheme == "http"
}

// Fallback is the response served while the circuit rejects calls.
type Fallback struct {
	StatusCode  int
	ContentType string
	Body        []byte
}

// route is what the proxy needs to serve one breaker. Routes are immutable:
// a spec change stores a new one.
type route struct {
	RouteConfig
	key     breaker.Key
	breaker *breaker.Breaker
	// refused, when set, is why the breaker may not forward, answered with
	// refusedStatus.
	refused       string
	refusedStatus int
	// series are the breaker's metric series, created on its first call:
	// a breaker that never sees traffic (or a transition) has none.
	series   atomic.Pointer[metrics.Route]
	registry *metrics.Breakers
	// inFlight counts the calls being forwarded through this breaker's
	// route; a reconfigured route takes it over, so that calls in flight
	// through the old one still count against the cap.
	inFlight *atomic.Int64
	// endpoints are Endpoints' live state, taken over from the route this
	// one replaced; onEjection is the table's hook.
	endpoints  []*endpoint
	onEjection func(breaker.Key, Endpoint, time.Time)
	// pool is a URL upstream's own connections when ownTransport says it
	// needs them (nil otherwise), taken over from the route this one
	// replaced while sameTransport holds.
	pool *connPool
}

// metrics returns the route's series, creating them (and the state series)
// on first use.
func (rt *route) metrics() *metrics.Route {
	if m := rt.series.Load(); m != nil {
		return m
	}
	m := rt.registry.Route(rt.key)
	if rt.series.CompareAndSwap(nil, &m) {
		rt.registry.SetState(rt.key, rt.breaker.Snapshot().State)
	}
	return rt.series.Load()
}

// splitPath splits "/<namespace>/<name>/<rest>" without allocating.
func splitPath(path string) (key breaker.Key, rest string, ok bool) {
	if len(path) < 4 || path[0] != '/' {
		return "", "", false
	}
	slash := strings.IndexByte(path[1:], '/')
	if slash <= 0 {
		return "", "", false
	}
	end := 1 + slash + 1
	nameEnd := strings.IndexByte(path[end:], '/')
	if nameEnd < 0 {
		nameEnd = len(path) - end
	}
	if nameEnd == 0 {
		return "", "", false
	}
	return breaker.Key(path[1 : end+nameEnd]), path[end+nameEnd:], true
}

// climbs reports whether an escaped path has a "." or ".." segment, written
// plainly or %-escaped (and with escaped slashes or backslashes as
// separators, as some servers read them): forwarded, it would leave the
// upstream's base path. It does not allocate.
func climbs(escaped string) bool {
	dots, other := 0, false
	for i := 0; i <= len(escaped); i++ {
		sep := i == len(escaped) || escaped[i] == '/' || escaped[i] == '\\'
		if !sep && escaped[i] == '%' && i+2 < len(escaped) {
			switch escaped[i+1 : i+3] {
			case "2e", "2E":
				dots++
				i += 2
				continue
			case "2f", "2F", "5c", "5C":
				sep = true
				i += 2
			}
		}
		if sep {
			if !other && (dots == 1 || dots == 2) {
				return true
			}
			dots, other = 0, false
			continue
		}
		if escaped[i] == '.' {
			dots++
		} else {
			other = true
		}
	}
	return false
}
