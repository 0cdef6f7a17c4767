package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
)

// Sentinel causes of a call's cancellation.
var (
	errRequestTimeout = errors.New("no response headers within the request timeout")
	errStreamIdle     = errors.New("stream idle for longer than the stream idle timeout")
)

// call is one proxied request's state. It is also the request's context,
// which carries it through ReverseProxy's hooks and the transport without
// another allocation.
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
	// informational counts the 1xx answers passed on (under headersMu).
	informational int
	// streaming is set once the response headers are in: from then on the
	// timer is the stream idle timeout.
	streaming atomic.Bool
	// resetOnIdle: the answer is an HTTP/2 caller's stream, whose writes
	// have no deadline; the idle timer resets the caller's stream instead
	// (expire), unless the handler has ended (handlerDone, under endMu:
	// after that the ResponseWriter is no longer ours to touch).
	resetOnIdle atomic.Bool
	endMu       sync.Mutex
	handlerDone bool
	// marks make and check the loop marks (loop.go); outHeader is the
	// outbound request's header, which gets the hop mark once the
	// connection is known; localAddr is that connection's local address;
	// callerHop is the caller's address when the caller is a hop of this
	// proxy (a loop answer is passed on to it re-marked).
	marks     *marks
	outHeader http.Header
	localAddr atomic.Pointer[string]
	callerHop string
	// endpoint is the Service endpoint the call goes to (nil for URL
	// upstreams).
	endpoint *endpoint
	// connected and sentHeaders are set once the transport has a
	// connection, and once it wrote the request's headers to it: an error
	// between the two that is not the connection's is the transport
	// refusing the request itself.
	connected, sentHeaders atomic.Bool
	// wrote is the ticket's coarse time when the request was fully written
	// to the upstream (0 until then, or when the call is not timed): a
	// slow call is timed from there, not from the caller's first byte.
	wrote atomic.Int64
	// rest is the escaped path after /<namespace>/<name>.
	rest string
	// grpcCaller: the caller speaks gRPC, and is answered as gRPC does;
	// grpcStream: the answer is a gRPC stream, judged when it ends.
	grpcCaller, grpcStream bool
	start                  time.Time
	reported               bool
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

// expire ends the call when its timer fires: the request timeout before
// the response headers, the stream idle timeout after them.
func (c *call) expire() {
	if c.streaming.Load() {
		c.cancel(errStreamIdle)
		if c.resetOnIdle.Load() {
			// A write blocked on a caller that stopped reading fails now: a
			// deadline already past resets the stream.
			c.endMu.Lock()
			if !c.handlerDone {
				_ = http.NewResponseController(c.w).SetWriteDeadline(time.Now().Add(-time.Second))
			}
			c.endMu.Unlock()
		}
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

// moved restarts the stream idle timeout when n bytes went by.
func (c *call) moved(n int) {
	if n > 0 {
		c.timer.Reset(c.route.StreamIdleTimeout)
	}
}

// gotConn and wroteHeaders are the trace's GotConn and WroteHeaders.
func (c *call) gotConn(info httptrace.GotConnInfo) {
	c.connected.Store(true)
	if mc, ok := info.Conn.(*markedConn); ok {
		// A connection of the lean client or an h2c one: its address and
		// hop mark are the same for every call it carries, made once, by
		// whichever call comes first (an h2c connection carries many at
		// once; any two make the same mark).
		m := mc.mark.Load()
		if m == nil {
			local := mc.LocalAddr().String()
			m = &connMark{local: local, hop: []string{c.marks.mark(hopLabel, local)}}
			mc.mark.Store(m)
		}
		c.localAddr.Store(&m.local)
		if c.outHeader != nil {
			c.outHeader[hopHeader] = m.hop
		}
		return
	}
	local := info.Conn.LocalAddr().String()
	c.localAddr.Store(&local)
	// The transport writes the headers after GotConn, on this goroutine's
	// say (and again after a new GotConn, on a retry).
	if c.outHeader != nil {
		c.outHeader[hopHeader] = []string{c.marks.mark(hopLabel, local)}
	}
}

// markedConn is an upstream connection as its calls' traces see it
// (GotConn), with what gotConn made of it: its local address and the hop
// mark for it (one proxy's marks: every pool belongs to one Proxy). The
// lean HTTP/1.1 client's connections are marked, and h2c ones, which carry
// many calls at once: the mark is published atomically, and nothing reads
// or changes its slice once it is made.
type markedConn struct {
	net.Conn
	mark atomic.Pointer[connMark]
}

type connMark struct {
	local string
	hop   []string
}

func (c *call) wroteHeaders() { c.sentHeaders.Store(true) }

// wroteRequest is the trace's WroteRequest: the request, body included,
// is with the upstream. It runs on the transport's goroutine.
func (c *call) wroteRequest(info httptrace.WroteRequestInfo) {
	if info.Err == nil {
		c.wrote.Store(c.ticket.Now())
	}
}

// settle gives the call's verdict to its breaker, and counts it.
func (c *call) settle(o outcome, f breaker.Failure) {
	// A copy: the transport's goroutine may still read c.ticket.
	ticket := c.ticket.TimedFrom(c.wrote.Load())
	switch o {
	case failure:
		ticket.Failure(f)
		c.metrics.Failure.Inc()
	case success:
		ticket.Success()
		c.metrics.Success.Inc()
	default:
		ticket.Cancel()
	}
	if o != noVerdict {
		// On the breaker's timeline, timed to the verdict as the
		// duration metric is.
		c.route.breaker.RecordCall(time.Since(c.start), o == failure)
	}
	// The endpoint's own count: the breaker's notion of failure, and
	// nothing the caller or the proxy itself caused (no verdict).
	if e, p := c.endpoint, c.route.Ejection; e != nil && p != nil && o != noVerdict {
		if until := e.outcome(o == failure, time.Now().UnixNano(), p, c.route.endpoints); !until.IsZero() && c.route.onEjection != nil {
			c.route.onEjection(c.route.key, e.Endpoint, until)
		}
	}
}

// ending is what the call knows of its end, for classifyError.
func (c *call) ending() callEnd {
	return callEnd{
		judged:     c.reported,
		bodyBroke:  c.body.broke(),
		callerGone: c.callerCtx.Err() != nil,
		unsent:     c.connected.Load() && !c.sentHeaders.Load(),
		cause:      context.Cause(c),
	}
}

// answer gives the upstream's answer its verdict; the answer goes back to
// the caller whatever it is. From here on the call is a stream: it lives as
// long as bytes move, under the route's stream idle timeout. Both paths
// call it: forward directly, upgrades through answerUpgrade.
func (c *call) answer(resp *http.Response) {
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
	ownLoop := c.ownLoop(resp)
	// What an upstream says of breakers is not ours to pass on: a loop
	// answer goes back re-marked, and only to a caller that is a hop.
	delete(resp.Header, StateHeader)
	delete(resp.Header, loopHeader)
	if ownLoop && c.callerHop != "" {
		resp.Header[loopHeader] = []string{c.marks.mark(loopLabel, c.callerHop)}
	}
	if !ownLoop && resp.StatusCode == http.StatusOK && isGRPC(resp.Header) {
		if status, ok := grpcAnswerStatus(resp.Header); ok {
			c.judgeGRPC(status, true) // trailers-only: the answer is complete
			return
		}
		// The verdict is in the trailers: forward gives it at the end.
		c.reported = false
		c.grpcStream = true
		return
	}
	c.metrics.Duration.Observe(time.Since(c.start).Seconds())
	o := classifyAnswer(resp, &c.route.FailureCodes, ownLoop)
	var f breaker.Failure
	if o == failure {
		f = breaker.Failure{StatusCode: resp.StatusCode, RetryAfter: retryAfter(resp, time.Now)}
	}
	c.settle(o, f)
}

// endGRPC gives a gRPC answer's verdict when its stream has ended (err
// nil) by the grpc-status of its trailers; when the stream broke, it is
// the upstream's failure unless the caller stopped taking it or left, or
// the stream idled out (no verdict, as for other streams).
func (c *call) endGRPC(trailer http.Header, err error) {
	if !c.grpcStream || c.reported {
		return
	}
	if err != nil {
		c.reported = true
		var toCaller *callerWriteError
		if errors.As(err, &toCaller) || c.callerCtx.Err() != nil || errors.Is(context.Cause(c), errStreamIdle) {
			c.settle(noVerdict, breaker.Failure{})
			return
		}
		c.metrics.Duration.Observe(time.Since(c.start).Seconds())
		c.settle(failure, breaker.Failure{Kind: "gRPC stream broken"})
		return
	}
	status, ok := grpcAnswerStatus(trailer)
	c.judgeGRPC(status, ok)
}

// judgeGRPC gives the verdict for a gRPC answer whose grpc-status maps to
// HTTP status (hasStatus false: the answer ended without one, which breaks
// the protocol: a failure). CANCELLED (499) is the caller's: no verdict.
func (c *call) judgeGRPC(status int, hasStatus bool) {
	c.reported = true
	c.metrics.Duration.Observe(time.Since(c.start).Seconds())
	switch {
	case !hasStatus:
		c.settle(failure, breaker.Failure{Kind: "gRPC answer without grpc-status"})
	case status == statusClientClosed:
		c.settle(noVerdict, breaker.Failure{})
	case c.route.FailureCodes.Contains(status):
		c.settle(failure, breaker.Failure{StatusCode: status})
	default:
		c.settle(success, breaker.Failure{})
	}
}

// ownLoop reports whether resp is this proxy's loop answer to this call,
// over the connection it went out on.
func (c *call) ownLoop(resp *http.Response) bool {
	local := c.localAddr.Load()
	return resp.StatusCode == http.StatusLoopDetected && local != nil &&
		c.marks.valid(resp.Header.Get(loopHeader), loopLabel, *local)
}

// fail ends a call that got no response (err is why): it gives the verdict
// classifyError reaches, if any, to the breaker and answers the caller.
// Both paths call it: forward directly, upgrades through failUpgrade.
func (c *call) fail(w http.ResponseWriter, err error) {
	v := classifyError(err, c.ending())
	if v.class != classUpgradeBroke { // otherwise answer gave the verdict already
		c.reported = true
		o := v.class.outcome()
		c.settle(o, breaker.Failure{Kind: v.class.kind()})
		if o == failure {
			c.metrics.Duration.Observe(time.Since(c.start).Seconds())
		}
	}
	writeVerdict(w, c.grpcCaller, v, c.route.key)
}

// writeVerdict tells the caller of key's call what v says went wrong.
func writeVerdict(w http.ResponseWriter, grpc bool, v errorVerdict, key breaker.Key) {
	switch v.class {
	case classUpgradeBroke:
		answerError(w, grpc, v.status, "upstream of circuit breaker '"+string(key)+"' broke the upgrade")
	case classBodyBroke:
		w.Header().Set("Connection", "close")
		answerError(w, grpc, v.status, "the request body did not arrive whole")
	case classCallerGone:
		w.WriteHeader(v.status) // nobody reads it: the caller is gone
	case classDialRefused:
		answerError(w, grpc, v.status, "upstream of circuit breaker '"+string(key)+"' is not allowed: "+v.detail)
	case classRefusedLocally:
		answerError(w, grpc, v.status, "the request cannot be sent to the upstream of circuit breaker '"+string(key)+"': "+v.detail)
	case classMalformed:
		answerError(w, grpc, v.status, "malformed request: "+v.detail)
	case classCertificate:
		answerError(w, grpc, v.status, "upstream of circuit breaker '"+string(key)+"' failed: "+v.class.kind()+": "+v.detail)
	default:
		answerError(w, grpc, v.status, "upstream of circuit breaker '"+string(key)+"' failed: "+v.class.kind())
	}
}
