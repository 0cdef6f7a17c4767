package proxy

import (
	"bufio"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"time"

	"golang.org/x/net/http/httpguts"
)

// newUpgrades returns the httputil.ReverseProxy that calls asking to
// switch protocols go through (it hijacks the caller's connection and
// copies both ways). It reaches the upstreams through p's transport and
// copy buffers, and reports through the same call methods as forward.
func (p *Proxy) newUpgrades() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      p.transport,
		BufferPool:     p.buffers,
		ModifyResponse: answerUpgrade,
		ErrorHandler:   failUpgrade,
		// Callers that leave and streams that go idle are ordinary: nothing
		// is logged per request.
		ErrorLog: log.New(io.Discard, "", 0),
	}
}

// answerUpgrade is ReverseProxy's ModifyResponse: the call's answer, but
// for a status below 100, which ReverseProxy would panic writing (it hands
// the error to failUpgrade instead).
func answerUpgrade(resp *http.Response) error {
	if resp.StatusCode < 100 {
		return &upstreamError{errInvalidStatus}
	}
	callOf(resp.Request).answer(resp)
	return nil
}

// failUpgrade is ReverseProxy's ErrorHandler: the call got no response, or
// its upgrade broke after the 101.
func failUpgrade(w http.ResponseWriter, r *http.Request, err error) {
	callOf(r).fail(w, err)
}

// rewrite points an upgrade's outbound request at the route's target.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	c := callOf(pr.In)
	c.setTarget(pr.Out.URL.RawQuery)
	pr.Out.URL = &c.target
	pr.Out.Host = c.route.Host
	p.addVia(pr.Out.Header)
	delete(pr.Out.Header, hopHeader)
	c.outHeader = pr.Out.Header
	pr.SetXForwarded()
}

// upgradeWriter is the caller's ResponseWriter as ReverseProxy sees it on
// an upgrade: the connection it hijacks writes under a deadline, renewed
// per write, so that a caller that stops reading ends its upgraded
// connection after one stream idle timeout. (Reads need none: the call's
// idle timer closes the upstream's side, which ends both copies.)
type upgradeWriter struct {
	http.ResponseWriter
	idle time.Duration
}

func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// The 101 goes out through brw, straight to conn: under this deadline.
	_ = conn.SetWriteDeadline(time.Now().Add(w.idle))
	return &deadlineConn{Conn: conn, idle: w.idle}, brw, nil
}

// Unwrap lets ReverseProxy's ResponseController reach the server's writer
// (to flush).
func (w *upgradeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// deadlineConn is a hijacked caller connection whose every write has a
// deadline idle from its start.
type deadlineConn struct {
	net.Conn
	idle time.Duration
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	if err := c.SetWriteDeadline(time.Now().Add(c.idle)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// errUnaskedUpgrade is an upstream's 101 to a call that asked for none.
var errUnaskedUpgrade = errors.New("the upstream switched protocols unasked")

// upgradeType is the protocol a call asks to switch to, "" for none.
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// idleConn is an upgraded connection (e.g. a WebSocket) that stays open
// while bytes move either way.
type idleConn struct {
	io.ReadWriteCloser
	c *call
}

func (b *idleConn) Read(p []byte) (int, error) {
	n, err := b.ReadWriteCloser.Read(p)
	b.c.moved(n)
	return n, err
}

func (b *idleConn) Write(p []byte) (int, error) {
	n, err := b.ReadWriteCloser.Write(p)
	b.c.moved(n)
	return n, err
}
