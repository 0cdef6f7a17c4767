package proxy

import (
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"
)

// The data plane's bounds. Each has a name, so that what a caller or an
// upstream can hold is written down (README, "Security").
const (
	// ReadHeaderTimeout bounds how long a caller may take to send its request headers.
	ReadHeaderTimeout = 10 * time.Second
	// IdleTimeout closes a caller's keep-alive connection idle for this long.
	IdleTimeout = 90 * time.Second
	// MaxHeaderBytes bounds a caller's request line and headers; beyond it
	// the caller gets 431 and the upstream is not contacted.
	MaxHeaderBytes = 64 << 10
	// MaxResponseHeaderBytes bounds an upstream's response headers.
	MaxResponseHeaderBytes = 64 << 10
	// DialTimeout bounds connecting to an upstream.
	DialTimeout = 5 * time.Second
	// TLSHandshakeTimeout bounds the TLS handshake with an upstream.
	TLSHandshakeTimeout = 10 * time.Second
	// ExpectContinueTimeout is how long a request with Expect: 100-continue
	// waits for the upstream's go-ahead before its body is sent anyway.
	ExpectContinueTimeout = time.Second
	// IdleConnTimeout closes pooled upstream connections idle for this long.
	IdleConnTimeout = 90 * time.Second
	// MaxIdleConns and MaxIdleConnsPerHost bound the upstream connection pool.
	MaxIdleConns        = 1024
	MaxIdleConnsPerHost = 256
)

// NewServer returns the data plane's HTTP server on addr with the bounds
// above. It has no read or write timeout for the whole exchange: a route's
// requestTimeout and streamIdleTimeout bound each call instead, so
// streaming bodies and upgraded connections can live as long as they move.
func NewServer(addr string, handler http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           handler,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

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

// errDialRefused is why the dial guard refused an address.
type errDialRefused struct {
	ip  net.IP
	why string
}

func (e *errDialRefused) Error() string {
	return fmt.Sprintf("upstream address %s refused: %s", e.ip, e.why)
}

// dialGuard refuses the addresses a Service upstream must never reach:
// loopback (the manager's own REST API and metrics), link-local (cloud
// metadata endpoints), unspecified and multicast addresses, and the
// manager's own addresses. A Service name that resolves there (through DNS
// the resource author does not control, or by a trick) is refused at the
// dial, whatever the name.
func dialGuard(own []net.IP) func(network, address string, c syscall.RawConn) error {
	return func(_, address string, _ syscall.RawConn) error {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return err
		}
		ip := net.ParseIP(host)
		if ip == nil {
			return &errDialRefused{why: "not an IP address"}
		}
		if why := refusedAddress(ip, own); why != "" {
			return &errDialRefused{ip: ip, why: why}
		}
		return nil
	}
}

func refusedAddress(ip net.IP, own []net.IP) string {
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "link-local"
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsMulticast():
		return "multicast"
	}
	for _, o := range own {
		if o.Equal(ip) {
			return "the manager's own address"
		}
	}
	return ""
}

// ownAddresses lists the addresses of this machine's (this pod's) interfaces.
func ownAddresses() []net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var ips []net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ips = append(ips, n.IP)
		}
	}
	return ips
}

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
}

func (t *splitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rt := t.open
	if callOf(req).route.GuardDial {
		rt = t.guarded
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, &upstreamError{err}
	}
	return resp, nil
}
