package proxy

import (
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
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
	// StreamHeaderDelay is how long a streamed answer's headers (no
	// length, or server-sent events) wait for its first bytes before they
	// are flushed to an HTTP/1.1 caller alone. An HTTP/2 caller's are
	// flushed at once (copyBody).
	StreamHeaderDelay = time.Millisecond
	// ExpectContinueTimeout is how long a request with Expect: 100-continue
	// waits for the upstream's go-ahead before its body is sent anyway.
	ExpectContinueTimeout = time.Second
	// IdleConnTimeout closes pooled upstream connections idle for this long.
	IdleConnTimeout = 90 * time.Second
	// MaxIdleConnsPerHost bounds each URL upstream's idle connections;
	// MaxIdleConns those of the transport https URL upstreams without a CA
	// of their own share, in all.
	MaxIdleConns        = 1024
	MaxIdleConnsPerHost = 256

	// HTTP/2 from callers (h2c, prior knowledge, on the proxy's port).
	// Each stream is one call: the concurrency caps count streams.

	// MaxConcurrentStreams bounds a caller connection's streams in flight;
	// Go's server also bounds the handlers a connection runs to it, so a
	// Rapid Reset flood (CVE-2023-44487) queues instead of piling up.
	MaxConcurrentStreams = 250
	// MaxReceiveBufferPerStream and MaxReceiveBufferPerConnection are the
	// flow-control windows a caller may fill with request body the proxy
	// has not forwarded yet.
	MaxReceiveBufferPerStream     = 256 << 10
	MaxReceiveBufferPerConnection = 1 << 20
	// MaxReadFrameSize bounds one HTTP/2 frame from a caller.
	MaxReadFrameSize = 1 << 20
	// PingTimeout closes a caller connection that does not answer a
	// health-check ping within it; SendPingTimeout is the quiet time after
	// which one is sent.
	SendPingTimeout = 30 * time.Second
	PingTimeout     = 15 * time.Second
)

// NewServer returns the data plane's HTTP server on addr with the bounds
// above. It has no read or write timeout for the whole exchange: a route's
// requestTimeout and streamIdleTimeout bound each call instead, so
// streaming bodies and upgraded connections can live as long as they move.
//
// It speaks HTTP/1.1 and, on the same port, HTTP/2 without TLS (h2c with
// prior knowledge: gRPC's in-cluster form), whose header list is bounded
// by MaxHeaderBytes too.
func NewServer(addr string, handler http.Handler) *http.Server {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Server{
		Addr:              addr,
		Handler:           handler,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		Protocols:         &protocols,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          MaxConcurrentStreams,
			MaxReadFrameSize:              MaxReadFrameSize,
			MaxReceiveBufferPerConnection: MaxReceiveBufferPerConnection,
			MaxReceiveBufferPerStream:     MaxReceiveBufferPerStream,
			SendPingTimeout:               SendPingTimeout,
			PingTimeout:                   PingTimeout,
		},
	}
}

// What one caller can hold of the process's memory, measured
// (BenchmarkMemoryPerHeldCall, BenchmarkMemoryPerIdleConnection;
// docs/benchmarks.md) and rounded up: the process-wide bounds are sized
// with them.
const (
	// HeldCallBytes is a call whose caller stopped reading a large answer:
	// the handler, the upstream connection's goroutines and buffers.
	HeldCallBytes = 128 << 10
	// ConnectionBytes is an idle keep-alive caller connection.
	ConnectionBytes = 32 << 10
	// DefaultMemory is what the bounds are sized for when the process has
	// no memory limit: the install's.
	DefaultMemory = 256 << 20
)

// Capacity is the process-wide bounds for a memory limit of memory bytes
// (DefaultMemory when 0): calls in flight may hold a quarter of it, caller
// connections an eighth; the rest is the breakers' (6.6 KiB each), the
// informers' cache and the runtime's. Neither is ever below 64.
func Capacity(memory int64) (calls, connections int64) {
	if memory <= 0 {
		memory = DefaultMemory
	}
	return max(memory/4/HeldCallBytes, 64), max(memory/8/ConnectionBytes, 64)
}

// Listen listens for callers on addr, with at most maxConnections of them
// connected at once (0: no bound): beyond it a new connection waits in the
// kernel's accept queue until another closes.
func Listen(addr string, maxConnections int) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil || maxConnections <= 0 {
		return l, err
	}
	return netutil.LimitListener(l, maxConnections), nil
}
