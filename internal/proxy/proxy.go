package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/utils/clock"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
)

// Headers the proxy sets on what it answers.
const (
	// StateHeader says why a call was not forwarded: open, half-open, saturated.
	StateHeader = "X-Circuit-Breaker-State"
	// loopHeader marks a 508 this installation answered, so that the hop
	// that forwarded the looping call does not count it as a failure.
	loopHeader = "X-Circuit-Breaker-Loop"
)

// Options configure a Proxy.
type Options struct {
	// LoopToken names this installation in the Via entry it adds to what it
	// forwards. Every replica must use the same one: a call that comes back
	// carrying it, through whichever replica, is a loop.
	LoopToken string
}

// Proxy is the data plane's http.Handler.
type Proxy struct {
	table   *Table
	clock   clock.PassiveClock
	reverse *httputil.ReverseProxy
	// via is this installation's Via entry, "1.1 circuit-breaker-<token>";
	// viaOnly is the header value of a call that carried no Via, shared by
	// every such call (its capacity is its length: an append copies it).
	via     string
	viaOnly []string
}

// New returns a Proxy that serves the routes of table.
func New(table *Table, clk clock.PassiveClock, opts Options) *Proxy {
	p := &Proxy{table: table, clock: clk, via: "1.1 circuit-breaker-" + opts.LoopToken}
	p.viaOnly = []string{p.via}
	p.reverse = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      &splitTransport{open: NewTransport(), guarded: newTransport(dialGuard(ownAddresses()))},
		BufferPool:     NewBufferPool(),
		ModifyResponse: classifyResponse,
		ErrorHandler:   handleError,
		// Callers that leave and streams that go idle are ordinary: nothing
		// is logged per request.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	return p
}

// Sentinel causes of a call's cancellation.
var (
	errRequestTimeout = errors.New("no response headers within the request timeout")
	errStreamIdle     = errors.New("stream idle for longer than the stream idle timeout")
)

// call is one proxied request's state. It is also the request's context,
// which carries it through ReverseProxy's hooks without another allocation.
type call struct {
	context.Context // the caller's context, cancelled by the timeouts
	callerCtx       context.Context
	cancel          context.CancelCauseFunc
	// timer cancels the call: first after the route's request timeout, then,
	// once the headers are in, after each idle stretch of a stream.
	timer   *time.Timer
	route   *route
	metrics *metrics.Route
	ticket  breaker.Ticket
	// w answers the caller; body is the caller's request body, if any.
	w    http.ResponseWriter
	body *callerBody
	// target is the upstream URL the call goes to; trace passes 1xx
	// answers on until the final one (answered, under headersMu).
	target    url.URL
	trace     httptrace.ClientTrace
	headersMu sync.Mutex
	answered  bool
	// streaming is set once the response headers are in: from then on the
	// timer is the stream idle timeout.
	streaming atomic.Bool
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
		writeError(w, rt.refusedStatus, "circuit breaker '"+string(key)+"' may not forward: "+rt.refused)
		return
	}
	if p.looped(r) {
		w.Header().Set(loopHeader, "1")
		writeError(w, http.StatusLoopDetected, "circuit breaker '"+string(key)+"': this call already passed through this proxy (a loop)")
		return
	}
	if rt.inFlight.Add(1) > rt.MaxConcurrent {
		rt.inFlight.Add(-1)
		w.Header().Set(StateHeader, "saturated")
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "circuit breaker '"+string(key)+"' has "+strconv.FormatInt(rt.MaxConcurrent, 10)+" calls in flight already")
		return
	}
	defer rt.inFlight.Add(-1)
	ticket, err := rt.breaker.Allow()
	if err != nil {
		p.reject(w, rt, err)
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	c := &call{Context: ctx, callerCtx: r.Context(), cancel: cancel, route: rt, metrics: rt.metrics(), ticket: ticket, w: w, rest: rest, start: time.Now()}
	if r.Body != nil && r.Body != http.NoBody {
		c.body = &callerBody{ReadCloser: r.Body}
		r.Body = c.body
	}
	c.timer = time.AfterFunc(rt.Timeout, c.expire)
	defer func() {
		c.timer.Stop()
		cancel(nil)
		if !c.reported {
			// No verdict was reached (e.g. a panic): give a probe slot back.
			c.ticket.Cancel()
		}
	}()
	if upgradeType(r.Header) != "" {
		p.reverse.ServeHTTP(w, r.WithContext(c))
		return
	}
	p.forward(w, r, c)
}

// expire ends the call when its timer fires: the request timeout before
// the response headers, the stream idle timeout after them.
func (c *call) expire() {
	if c.streaming.Load() {
		c.cancel(errStreamIdle)
		return
	}
	if c.body.awaited() {
		// The transport is still waiting for the caller's body (one that
		// was promised and never sent), and will not give up the call until
		// that read returns: end the read, the caller's doing.
		_ = http.NewResponseController(c.w).SetReadDeadline(time.Now())
	}
	c.cancel(errRequestTimeout)
}

// looped reports whether r already carries this installation's Via entry.
func (p *Proxy) looped(r *http.Request) bool {
	for _, v := range r.Header["Via"] {
		if strings.Contains(v, p.via) {
			return true
		}
	}
	return false
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

// rewrite points an upgrade's outbound request at the route's target.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	c := callOf(pr.In)
	c.setTarget(pr.Out.URL.RawQuery)
	pr.Out.URL = &c.target
	pr.Out.Host = ""
	p.addVia(pr.Out.Header)
	pr.SetXForwarded()
}

// addVia adds this installation's Via entry to h.
func (p *Proxy) addVia(h http.Header) {
	if via := h["Via"]; len(via) > 0 {
		h["Via"] = append(via, p.via)
	} else {
		h["Via"] = p.viaOnly // no allocation per call
	}
}

// classifyResponse reports the upstream's answer to the breaker. A failing
// answer still goes back to the caller. From here on the call is a stream:
// it lives as long as bytes move, under the route's stream idle timeout.
func classifyResponse(resp *http.Response) error {
	c := callOf(resp.Request)
	c.reported = true
	c.streaming.Store(true)
	c.timer.Reset(c.route.StreamIdleTimeout)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
			resp.Body = &idleConn{ReadWriteCloser: rwc, c: c}
		}
	} else {
		resp.Body = &idleBody{ReadCloser: resp.Body, c: c}
	}
	c.metrics.Duration.Observe(time.Since(c.start).Seconds())
	if resp.StatusCode == http.StatusLoopDetected && resp.Header.Get(loopHeader) != "" {
		// Our own loop answer, from the hop this call looped into: the
		// upstream was never asked, so there is no verdict.
		c.ticket.Cancel()
		return nil
	}
	if c.route.FailureCodes.Contains(resp.StatusCode) {
		c.ticket.Failure(breaker.Failure{StatusCode: resp.StatusCode, RetryAfter: retryAfter(resp, time.Now)})
		c.metrics.Failure.Inc()
		return nil
	}
	c.ticket.Success()
	c.metrics.Success.Inc()
	return nil
}

// handleError classifies a call that got no response. Only what the
// upstream side did is a failure: a timeout waiting for it, or an error
// dialing or talking to it. What the caller caused is no verdict and gives
// its probe slot back: a caller that left, a request body that broke or
// stopped arriving, or a request ReverseProxy would not forward at all.
func handleError(w http.ResponseWriter, r *http.Request, err error) {
	c := callOf(r)
	if c.reported {
		// ReverseProxy gave up after the response was classified (an
		// upgrade that failed after its 101): one call, one verdict.
		writeError(w, http.StatusBadGateway, "upstream of circuit breaker '"+string(c.route.key)+"' broke the upgrade")
		return
	}
	c.reported = true
	var fromUpstream *upstreamError
	var refused *errDialRefused
	switch {
	case c.body.broke():
		c.ticket.Cancel()
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusBadRequest, "the request body did not arrive whole")
		return
	case c.callerCtx.Err() != nil:
		c.ticket.Cancel()
		w.WriteHeader(499) // nobody reads it: the caller is gone
		return
	case errors.As(err, &refused):
		c.ticket.Cancel()
		writeError(w, http.StatusBadGateway, "upstream of circuit breaker '"+string(c.route.key)+"' is not allowed: "+refused.why)
		return
	case !errors.As(err, &fromUpstream) && !errors.Is(context.Cause(c), errRequestTimeout):
		c.ticket.Cancel()
		writeError(w, http.StatusBadRequest, "malformed request: "+err.Error())
		return
	}
	kind, status := "connection error", http.StatusBadGateway
	var dnsErr *net.DNSError
	switch {
	case errors.Is(context.Cause(c), errRequestTimeout) || errors.Is(err, context.DeadlineExceeded):
		kind, status = "timeout", http.StatusGatewayTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		kind = "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		kind = "connection reset"
	case errors.As(err, &dnsErr):
		kind = "dns error"
	}
	c.ticket.Failure(breaker.Failure{Kind: kind})
	c.metrics.Failure.Inc()
	c.metrics.Duration.Observe(time.Since(c.start).Seconds())
	writeError(w, status, "upstream of circuit breaker '"+string(c.route.key)+"' failed: "+kind)
}

// callerBody is the caller's request body as the transport reads it. It
// tells a body that broke (bad chunking, a caller that stopped sending)
// from an upstream that failed: a read error, or a read still waiting for
// the caller when the call ended, is the caller's doing.
type callerBody struct {
	io.ReadCloser
	reading atomic.Bool
	failed  atomic.Bool
	// ended is set when the call is over: the transport may still read
	// (it can outlive the handler), and gets an error instead of racing
	// the server for the body.
	ended atomic.Bool
}

func (b *callerBody) Read(p []byte) (int, error) {
	if b.ended.Load() {
		return 0, errCallEnded
	}
	b.reading.Store(true)
	n, err := b.ReadCloser.Read(p)
	b.reading.Store(false)
	if err != nil && err != io.EOF {
		b.failed.Store(true)
	}
	return n, err
}

// Close does not close the caller's body, which is the server's to close:
// the transport closes what it sends, even when a dial fails before a byte
// was read, and the caller may still be sending (e.g. waiting for a 100
// Continue).
func (b *callerBody) Close() error { return nil }

// end marks the call over.
func (b *callerBody) end() { b.ended.Store(true) }

var errCallEnded = errors.New("the call has ended")

// broke reports whether the body failed or was still awaited from the caller.
func (b *callerBody) broke() bool {
	return b != nil && (b.failed.Load() || b.reading.Load())
}

// awaited reports whether a read is waiting for the caller right now.
func (b *callerBody) awaited() bool {
	return b != nil && b.reading.Load()
}

// idleBody is a streaming response body that keeps its call alive while
// bytes arrive.
type idleBody struct {
	io.ReadCloser
	c *call
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.c.moved(n)
	return n, err
}

// moved restarts the stream idle timeout when n bytes went by.
func (c *call) moved(n int) {
	if n > 0 {
		c.timer.Reset(c.route.StreamIdleTimeout)
	}
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

// reject answers a call the breaker refused, without contacting the upstream.
func (p *Proxy) reject(w http.ResponseWriter, rt *route, err error) {
	rt.metrics().Rejected.Inc()
	state, retryAfter := "half-open", 1
	switch {
	case errors.Is(err, breaker.ErrForcedOpen):
		state, retryAfter = "open", 0 // no time to give: it opens when someone changes the mode
	case errors.Is(err, breaker.ErrOpen):
		state = "open"
		retryAfter = max(1, int(breaker.WholeSecondsUntil(rt.breaker.OpenUntil(), p.clock.Now())))
	}
	h := w.Header()
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	h.Set(StateHeader, state)
	if fb := rt.Fallback; fb != nil {
		if fb.StatusCode == http.StatusNoContent || fb.StatusCode == http.StatusNotModified {
			w.WriteHeader(fb.StatusCode) // these answers carry no body
			return
		}
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

// NewBufferPool returns the pool of ReverseProxy's 32 KiB copy buffers;
// without one every response allocates a buffer. The benchmarks' bare
// baselines use the same pool.
func NewBufferPool() httputil.BufferPool { return &bufferPool{} }

type bufferPool struct{ pool sync.Pool }

func (b *bufferPool) Get() []byte {
	if buf, ok := b.pool.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, 32*1024)
}

func (b *bufferPool) Put(buf []byte) { b.pool.Put(&buf) }

// retryAfter is what a 429 or 503 answer asks for in Retry-After: delay
// seconds or an HTTP date; 0 for anything else.
func retryAfter(resp *http.Response, now func() time.Time) time.Duration {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return 0
	}
	return parseRetryAfter(resp.Header.Get("Retry-After"), now)
}

// maxRetryAfter bounds what an upstream may ask for; the breaker clamps it
// again to its own maximum open time.
const maxRetryAfter = 24 * time.Hour

func parseRetryAfter(v string, now func() time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(maxRetryAfter/time.Second))) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil {
		return min(max(at.Sub(now()), 0), maxRetryAfter)
	}
	return 0
}
