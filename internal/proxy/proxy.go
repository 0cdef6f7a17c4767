package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/utils/clock"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// Proxy is the data plane's http.Handler.
type Proxy struct {
	table   *Table
	clock   clock.PassiveClock
	reverse *httputil.ReverseProxy
}

// New returns a Proxy that serves the routes of table.
func New(table *Table, clk clock.PassiveClock) *Proxy {
	p := &Proxy{table: table, clock: clk}
	p.reverse = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		Transport:      NewTransport(),
		BufferPool:     &bufferPool{},
		ModifyResponse: classifyResponse,
		ErrorHandler:   handleTransportError,
	}
	return p
}

// NewTransport returns the shared upstream transport, tuned to keep
// connections to busy upstreams open and reuse them.
func NewTransport() *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// call is one proxied request's state. It is also the request's context,
// which carries it through ReverseProxy's hooks without another allocation.
type call struct {
	context.Context // the caller's context, bounded by the request timeout
	callerCtx       context.Context
	route           *route
	ticket          breaker.Ticket
	// rest is the escaped path after /<namespace>/<name>.
	rest     string
	start    time.Time
	reported bool
}

type callKey struct{}

func (c *call) Value(key any) any {
	if key == (callKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func callOf(r *http.Request) *call {
	return r.Context().Value(callKey{}).(*call)
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key, rest, ok := splitPath(r.URL.EscapedPath())
	if !ok {
		writeError(w, http.StatusNotFound, "no circuit breaker here: use /<namespace>/<name>/<path>")
		return
	}
	rt, ok := p.table.get(key)
	if !ok {
		writeError(w, http.StatusNotFound, "circuit breaker '"+string(key)+"' not found")
		return
	}
	if rt.refused != "" {
		writeError(w, http.StatusForbidden, "circuit breaker '"+string(key)+"' may not forward: "+rt.refused)
		return
	}
	ticket, err := rt.breaker.Allow()
	if err != nil {
		p.reject(w, rt, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), rt.Timeout)
	defer cancel()
	c := &call{Context: ctx, callerCtx: r.Context(), route: rt, ticket: ticket, rest: rest, start: time.Now()}
	defer func() {
		if !c.reported {
			// No verdict was reached (e.g. a panic): give a probe slot back.
			c.ticket.Cancel()
		}
	}()
	p.reverse.ServeHTTP(w, r.WithContext(c))
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

func rewrite(pr *httputil.ProxyRequest) {
	c := callOf(pr.In)
	target := c.route.Target
	out := pr.Out.URL
	out.Scheme = target.Scheme
	out.Host = target.Host
	escaped := c.rest // most targets have no path: no concatenation
	if base := strings.TrimSuffix(target.EscapedPath(), "/"); base != "" {
		escaped = base + c.rest
	}
	if escaped == "" {
		escaped = "/"
	}
	if path, err := url.PathUnescape(escaped); err == nil {
		out.Path, out.RawPath = path, escaped
	}
	pr.Out.Host = ""
	pr.SetXForwarded()
}

// classifyResponse reports the upstream's answer to the breaker. A failing
// answer still goes back to the caller.
func classifyResponse(resp *http.Response) error {
	c := callOf(resp.Request)
	c.reported = true
	c.route.metrics.duration.Observe(time.Since(c.start).Seconds())
	if c.route.FailureCodes.Contains(resp.StatusCode) {
		c.ticket.Failure(breaker.Failure{StatusCode: resp.StatusCode})
		c.route.metrics.failure.Inc()
		return nil
	}
	c.ticket.Success()
	c.route.metrics.success.Inc()
	return nil
}

// handleTransportError classifies a call that got no response: a timeout or
// an unreachable upstream fails; a caller that went away is no verdict.
func handleTransportError(w http.ResponseWriter, r *http.Request, err error) {
	c := callOf(r)
	c.reported = true
	if c.callerCtx.Err() != nil {
		c.ticket.Cancel()
		w.WriteHeader(499) // nobody reads it: the caller is gone
		return
	}
	kind, status := "connection error", http.StatusBadGateway
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(c.Err(), context.DeadlineExceeded):
		kind, status = "timeout", http.StatusGatewayTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		kind = "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		kind = "connection reset"
	case errors.As(err, &dnsErr):
		kind = "dns error"
	}
	c.ticket.Failure(breaker.Failure{Kind: kind})
	c.route.metrics.failure.Inc()
	c.route.metrics.duration.Observe(time.Since(c.start).Seconds())
	writeError(w, status, "upstream of circuit breaker '"+string(c.route.key)+"' failed: "+kind)
}

// reject answers a call the breaker refused, without contacting the upstream.
func (p *Proxy) reject(w http.ResponseWriter, rt *route, err error) {
	rt.metrics.rejected.Inc()
	state, retryAfter := "half-open", 1
	if errors.Is(err, breaker.ErrOpen) {
		state = "open"
		retryAfter = max(1, int(breaker.WholeSecondsUntil(rt.breaker.OpenUntil(), p.clock.Now())))
	}
	h := w.Header()
	h.Set("Retry-After", strconv.Itoa(retryAfter))
	h.Set("X-Circuit-Breaker-State", state)
	if fb := rt.Fallback; fb != nil {
		if fb.ContentType != "" {
			h.Set("Content-Type", fb.ContentType)
		}
		h.Set("Content-Length", strconv.Itoa(len(fb.Body)))
		w.WriteHeader(fb.StatusCode)
		_, _ = w.Write(fb.Body)
		return
	}
	writeError(w, http.StatusServiceUnavailable, "circuit breaker '"+string(rt.key)+"' is "+state+": "+err.Error())
}

func writeError(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{message})
}

// bufferPool reuses ReverseProxy's copy buffers; without it every response
// allocates 32 KiB.
type bufferPool struct{ pool sync.Pool }

func (b *bufferPool) Get() []byte {
	if buf, ok := b.pool.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, 32*1024)
}

func (b *bufferPool) Put(buf []byte) { b.pool.Put(&buf) }
