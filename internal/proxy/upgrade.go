package proxy

import (
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httputil"

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

// answerUpgrade is ReverseProxy's ModifyResponse: the call's answer.
func answerUpgrade(resp *http.Response) error {
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
	pr.Out.Host = ""
	p.addVia(pr.Out.Header)
	pr.SetXForwarded()
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
