package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"syscall"
	"time"
)

// newTransport returns an upstream transport; control, when set, vets each
// address before it is dialled.
func newTransport(control func(network, address string, c syscall.RawConn) error) *http.Transport {
	dialer := &net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second, Control: control}
	return &http.Transport{
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           MaxIdleConns,
		MaxIdleConnsPerHost:    MaxIdleConnsPerHost,
		IdleConnTimeout:        IdleConnTimeout,
		TLSHandshakeTimeout:    TLSHandshakeTimeout,
		ExpectContinueTimeout:  ExpectContinueTimeout,
		MaxResponseHeaderBytes: MaxResponseHeaderBytes,
	}
}

// NewTransport returns the transport URL upstreams are reached with (and
// the benchmarks' baseline): tuned to keep connections to busy upstreams
// open and reuse them, with no dial guard.
func NewTransport() *http.Transport { return newTransport(nil) }

// upstreamError marks an error of the upstream side: our transport returned
// it. Anything else ReverseProxy hands its ErrorHandler (a request it would
// not forward) is the caller's doing.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// splitTransport sends Service upstreams' calls through the guarded
// transport and URL upstreams' through the open one, and marks every error
// it returns as the upstream side's.
type splitTransport struct {
	open, guarded http.RoundTripper
	// guard vets each address a Service endpoint's connections dial (nil
	// in the unit tests, whose endpoints are on loopback).
	guard func(network, address string, c syscall.RawConn) error
}

// errNoEndpoint: a Service upstream with no endpoint to call (all of them
// ejected, or none ready before the breaker was told).
var errNoEndpoint = errors.New("no ready endpoint")

func (t *splitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := callOf(req)
	rt := t.open
	switch cfg := &c.route.RouteConfig; {
	case c.endpoint != nil && cfg.http1():
		rt = c.endpoint.getHTTP1(func() *http1Pool { return newHTTP1Pool(t.guard, MaxIdleConnsPerEndpoint) })
	case c.endpoint != nil:
		rt = c.endpoint.get(func() *http.Transport { return t.newPool(t.guard, cfg, MaxIdleConnsPerEndpoint) })
	case cfg.Host != "":
		return nil, &upstreamError{errNoEndpoint}
	case c.route.pool != nil && cfg.http1():
		rt = c.route.pool.getHTTP1(func() *http1Pool {
			if cfg.GuardDial {
				return newHTTP1Pool(t.guard, MaxIdleConnsPerHost)
			}
			return newHTTP1Pool(nil, MaxIdleConnsPerHost)
		})
	case c.route.pool != nil:
		rt = c.route.pool.get(func() *http.Transport { return t.newPool(nil, cfg, MaxIdleConnsPerHost) })
	case cfg.GuardDial:
		rt = t.guarded
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, &upstreamError{err}
	}
	return resp, nil
}

// newPool returns a transport of its own for cfg's protocol and trust,
// dialling through guard (when set), with at most idle idle connections.
func (t *splitTransport) newPool(guard func(network, address string, c syscall.RawConn) error, cfg *RouteConfig, idle int) *http.Transport {
	tr := newTransport(guard)
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = idle, idle
	if cfg.H2C {
		// Prior knowledge: no HTTP/1.1 and no Upgrade dance, which gRPC
		// servers do not answer. The same dial (guard included) and the
		// same header bound as HTTP/1.1.
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
		// Each call's trace sees the connection it was dialled as
		// (GotConn): a markedConn keeps its hop mark for all of them.
		dial := tr.DialContext
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &markedConn{Conn: conn}, nil
		}
	}
	if cfg.TLS != nil {
		// ForceAttemptHTTP2 still offers h2 by ALPN with a config of our own.
		tr.TLSClientConfig = &tls.Config{RootCAs: cfg.TLS.RootCAs, ServerName: cfg.TLS.ServerName, MinVersion: tls.VersionTLS12}
	}
	return tr
}

// newSplitTransport returns the transports of URL upstreams (open) and of
// Service upstreams (guarded: their addresses come from EndpointSlices,
// which anyone who can write one may fill), each endpoint with its own pool.
func newSplitTransport(guard func(network, address string, c syscall.RawConn) error) *splitTransport {
	return &splitTransport{open: NewTransport(), guarded: newTransport(guard), guard: guard}
}
