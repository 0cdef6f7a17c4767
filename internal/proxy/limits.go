package proxy

import (
	"net/http"
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
