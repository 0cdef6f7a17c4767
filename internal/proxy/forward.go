package proxy

import (
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// forward is the data plane's path for every call that is not an upgrade
// (upgrades go through httputil.ReverseProxy). It does what ReverseProxy
// with Rewrite and SetXForwarded does, in the same order, with fewer
// copies: the caller's request becomes the upstream's (its header map is
// edited in place, which net/http allows a handler: it reads what it needs
// of the headers before the handler runs), the target URL lives in the
// call, and the answer's header values are handed over rather than copied.
// docs/benchmarks.md ("The proxy hop") has what this saves and costs.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, c *call) {
	h := r.Header
	if h == nil {
		h = make(http.Header)
	}
	trailers := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	removeHopByHop(h)
	if trailers {
		// Tell the upstream we pass trailers on, as the caller asked.
		h["Te"] = teTrailers
	}
	// What the caller claims about earlier hops is not passed on: ours
	// replaces it (the hop mark once the connection is known).
	delete(h, "Forwarded")
	delete(h, hopHeader)
	c.outHeader = h
	if clientIP, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		h["X-Forwarded-For"] = []string{clientIP}
	} else {
		delete(h, "X-Forwarded-For")
	}
	h["X-Forwarded-Host"] = []string{r.Host}
	if r.TLS == nil {
		h["X-Forwarded-Proto"] = forwardedHTTP
	} else {
		h["X-Forwarded-Proto"] = forwardedHTTPS
	}
	p.addVia(h)
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = noUserAgent // not Go's default one
	}

	c.setTarget(cleanQuery(r.URL.RawQuery))
	c.trace.Got1xxResponse = c.got1xx
	out := r.WithContext(httptrace.WithClientTrace(c, &c.trace))
	out.URL, out.Host, out.Header, out.RequestURI, out.Close = &c.target, c.route.Host, h, "", false
	switch {
	case r.ContentLength == 0:
		out.Body = nil // lets the transport retry on a stale pooled connection
	case c.body != nil:
		out.Body = c.body
		defer c.body.end()
	}

	res, err := p.transport.RoundTrip(out)
	c.headersMu.Lock()
	c.answered = true // no 1xx may touch the caller's headers any more
	c.headersMu.Unlock()
	if err != nil {
		c.fail(w, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// Nobody asked to switch protocols: the upstream broke HTTP, a
		// failure of its own.
		_ = res.Body.Close()
		c.fail(w, &upstreamError{errUnaskedUpgrade})
		return
	}
	if res.StatusCode < 100 {
		_ = res.Body.Close()
		c.fail(w, &upstreamError{errInvalidStatus})
		return
	}
	removeHopByHop(res.Header)
	c.answer(res)

	dst := w.Header()
	for k, vv := range res.Header {
		if len(dst[k]) == 0 {
			dst[k] = vv // the answer is discarded after this: no copy
		} else {
			dst[k] = append(dst[k], vv...)
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		dst.Add("Trailer", strings.Join(keys, ", "))
		// An HTTP/2 upstream may send a length with its trailers; an
		// HTTP/1.1 caller gets them only in a chunked answer.
		delete(dst, "Content-Length")
	}
	// Every write to the caller has a deadline: a caller that stops
	// reading holds its call for about one stream idle timeout, not for
	// ever.
	wd := writeDeadline{rc: http.NewResponseController(w), idle: c.route.StreamIdleTimeout}
	stream := res.ContentLength == -1 || isEventStream(res.Header["Content-Type"])
	if stream && r.ProtoMajor == 2 {
		// An HTTP/2 caller's stream (every gRPC answer) is flushed write by
		// write, so a caller that stops reading blocks the handler in a
		// write, where no byte moves and the call's idle timer fires:
		// expire resets the stream then. No deadline of its own is set: on
		// HTTP/2 each one is a round trip to the connection's goroutine and
		// a timer there, per call. What is left after the handler returns
		// is the trailers, which flow control does not hold.
		wd.byIdleTimer = true
		c.resetOnIdle.Store(true)
	}
	wd.renew()
	if _, typed := dst["Content-Type"]; stream && !typed {
		// A stream's headers may leave before its first bytes, so none
		// gets a type sniffed from them: none gets one at all.
		dst["Content-Type"] = nil
	}
	w.WriteHeader(res.StatusCode)

	if err := p.copyBody(w, &wd, res, stream); err != nil {
		_ = res.Body.Close()
		c.endGRPC(nil, err)
		if r.Context().Value(http.ServerContextKey) != nil {
			// The answer is cut short; net/http aborts the connection
			// without logging (as ReverseProxy does).
			panic(http.ErrAbortHandler)
		}
		return
	}
	_ = res.Body.Close() // now, not deferred: it fills res.Trailer
	c.endGRPC(res.Trailer, nil)
	// The answer's end (last chunk, trailers) is written after the handler
	// returns, under this deadline.
	wd.renew()
	if len(res.Trailer) > 0 {
		// Chunked, even for a short body, so that the trailers can follow.
		_ = wd.rc.Flush()
	}
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			dst[k] = append(dst[k], vv...)
		}
		return
	}
	for k, vv := range res.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// copyBody streams the upstream's body to the caller, each write under a
// deadline idle from now. A stream (no length, or server-sent events) is
// flushed as it comes.
//
// Its headers: to an HTTP/1.1 caller they leave with its first bytes, or
// alone once StreamHeaderDelay has passed without any (one write instead
// of two for most streams, a short chunked answer). To an HTTP/2 caller
// (every gRPC answer) they are flushed at once from a timer's goroutine,
// as ReverseProxy does, while the handler reads the first bytes: the
// connection's goroutine then gets the headers of streams answered
// together in a burst and writes them in one system call, where frames
// handed over by each handler in turn go out one per call
// (docs/benchmarks.md, gRPC: 5.16 write system calls a gRPC call, 6.02
// before; the bare ReverseProxy's 5.14).
func (p *Proxy) copyBody(w http.ResponseWriter, wd *writeDeadline, res *http.Response, flush bool) error {
	rc := wd.rc
	var early *earlyHeaders
	if flush {
		early = &earlyHeaders{rc: rc, alongside: wd.byIdleTimer}
		delay := StreamHeaderDelay
		if early.alongside {
			delay = 0
		}
		early.timer = time.AfterFunc(delay, early.flush)
		defer func() { // unless stopped before the first write, below
			if early != nil {
				early.stop()
			}
		}()
	}
	buf := p.buffers.Get()
	defer p.buffers.Put(buf)
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if early != nil && !early.alongside {
				early.stop()
				early = nil
			}
			wd.renew()
			if err := early.write(w, rc, buf[:n], flush); err != nil {
				return err
			}
		}
		if rerr != nil && early != nil {
			// The stream ended, or broke, before its first bytes (or, for
			// an HTTP/2 caller, before the timer flushed): its headers
			// leave now, framed as a stream still.
			early.stop()
			early.flushNow()
			early = nil
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// earlyHeaders flushes a stream's headers before its first bytes: for an
// HTTP/1.1 caller only when they are late (most streams have them at once,
// and then the headers and those bytes leave in one write), for an HTTP/2
// caller at once (alongside), from the timer's goroutine, serialised with
// the handler's own writes. It is nil for an answer that is not a stream.
type earlyHeaders struct {
	rc    *http.ResponseController
	timer *time.Timer
	// alongside: the timer fires at once and is not stopped by the first
	// bytes (an HTTP/2 caller).
	alongside bool
	mu        sync.Mutex // serialises flush with the handler's writes
	done      bool       // flush may no longer run
	// flushed is whether the headers have left (read by the handler only
	// under mu or after stop, which waits for a running flush).
	flushed bool
}

func (e *earlyHeaders) flush() {
	e.mu.Lock()
	if !e.done && !e.flushed {
		e.flushed = true
		_ = e.rc.Flush()
	}
	e.mu.Unlock()
}

// write writes p to the caller, and flushes it when flush is set; alongside
// the timer, under its lock. e may be nil.
func (e *earlyHeaders) write(w http.ResponseWriter, rc *http.ResponseController, p []byte, flush bool) error {
	if e != nil {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.flushed = true // the flush below takes the headers along
	}
	written, err := w.Write(p)
	if err != nil {
		return &callerWriteError{err}
	}
	if written != len(p) {
		return &callerWriteError{io.ErrShortWrite}
	}
	if flush {
		_ = rc.Flush()
	}
	return nil
}

// flushNow flushes the headers, after stop, unless they have left.
func (e *earlyHeaders) flushNow() {
	if !e.flushed {
		e.flushed = true
		_ = e.rc.Flush()
	}
}

// stop ends the wait; once it returns, flush no longer touches the caller.
func (e *earlyHeaders) stop() {
	if e.timer.Stop() {
		e.done = true // the timer never fired: flush will not run
		return
	}
	e.mu.Lock() // it fired: wait for its flush, if it is still under way
	e.done = true
	e.mu.Unlock()
}

// isEventStream reports whether a Content-Type is text/event-stream
// (server-sent events), parsing it only when it starts so.
func isEventStream(contentType []string) bool {
	const sse = "text/event-stream"
	if len(contentType) == 0 || len(contentType[0]) < len(sse) || !strings.EqualFold(contentType[0][:len(sse)], sse) {
		return false
	}
	base, _, _ := mime.ParseMediaType(contentType[0])
	return base == sse
}

// writeDeadline keeps a deadline on the writes to the caller, about one
// stream idle timeout ahead of each. It is moved only once a quarter of
// the timeout has passed since it was last set, so a write's deadline is
// between 3/4 and 1 idle timeout away: setting it is a channel round trip
// to the connection's goroutine for an HTTP/2 caller, which per write
// would cost a gRPC call about a tenth more CPU (docs/benchmarks.md).
type writeDeadline struct {
	rc   *http.ResponseController
	idle time.Duration
	set  time.Time // when it was last set; zero before
	// byIdleTimer: no deadline is set; the call's idle timer ends a
	// blocked write (an HTTP/2 caller's stream, see forward).
	byIdleTimer bool
}

func (d *writeDeadline) renew() {
	if d.byIdleTimer {
		return
	}
	now := time.Now()
	if !d.set.IsZero() && now.Sub(d.set) < d.idle/4 {
		return
	}
	d.set = now
	_ = d.rc.SetWriteDeadline(now.Add(d.idle))
}

// callerWriteError is a write to the caller that failed: the caller's
// doing, not the upstream's.
type callerWriteError struct{ err error }

func (e *callerWriteError) Error() string { return "writing to the caller: " + e.err.Error() }
func (e *callerWriteError) Unwrap() error { return e.err }

// maxInformational bounds the 1xx answers an upstream may send before its
// final one (net/http's own bound, 5, applies only without a hook like
// got1xx): beyond it the call fails, the upstream's doing.
const maxInformational = 8

var errTooManyInformational = errors.New("more than 8 informational (1xx) answers")

// errInvalidStatus is an answer with a status below 100: net/http's client
// takes any three digits, but no such status exists, and WriteHeader
// panics on one. The upstream broke HTTP, a failure of its own.
var errInvalidStatus = errors.New("the upstream answered with a status below 100")

// got1xx passes an informational answer (e.g. 103 Early Hints) on to the
// caller while the final one is awaited.
func (c *call) got1xx(code int, header textproto.MIMEHeader) error {
	c.headersMu.Lock()
	defer c.headersMu.Unlock()
	if c.answered {
		return nil
	}
	if c.informational++; c.informational > maxInformational {
		return errTooManyInformational
	}
	h := c.w.Header()
	for k, vv := range header {
		h[k] = append(h[k], vv...)
	}
	c.w.WriteHeader(code)
	clear(h) // a 1xx's headers are not the final answer's
	return nil
}

// setTarget points the call's outbound URL at its route's target, with the
// caller's path after /<namespace>/<name> and query.
func (c *call) setTarget(rawQuery string) {
	target := c.route.Target
	c.target = url.URL{Scheme: target.Scheme, Host: target.Host, RawQuery: rawQuery}
	if c.endpoint != nil {
		c.target.Host = c.endpoint.host // dialled by address; Host says the name
	}
	escaped := c.rest // most targets have no path: no concatenation
	if base := strings.TrimSuffix(target.EscapedPath(), "/"); base != "" {
		escaped = base + c.rest
	}
	if escaped == "" {
		escaped = "/"
	}
	if path, err := url.PathUnescape(escaped); err == nil {
		c.target.Path, c.target.RawPath = path, escaped
	}
}

// Header values shared by every call (never appended to in place: each has
// its length as capacity).
var (
	teTrailers     = []string{"trailers"}
	forwardedHTTP  = []string{"http"}
	forwardedHTTPS = []string{"https"}
	noUserAgent    = []string{""}
)

// hopHeaders are the hop-by-hop headers (RFC 9110 7.6.1, and those RFC 2616
// named), which one connection's ends use and no proxy passes on.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop removes the hop-by-hop headers from h, and those its
// Connection header names.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopHeaders {
		delete(h, f)
	}
}

// maxQueryParams is net/http's bound on a query's parameters (urlmaxqueryparams).
const maxQueryParams = 10000

// cleanQuery returns the caller's query as ReverseProxy passes it on: as it
// is, unless it has what a server may read differently from us (a ';', a
// broken %-escape, too many parameters): then re-encoded from what Go
// parses of it.
func cleanQuery(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	if strings.Count(s, "&")+1 > maxQueryParams {
		return reencode(s)
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
