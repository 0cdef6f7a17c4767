package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

// http1Pool is the lean HTTP/1.1 client of one upstream address (a URL
// upstream's host, or one endpoint): a stack of idle connections from which
// the handler's own goroutine takes one, writes the request and reads the
// answer. http.Transport runs two goroutines per connection and hands every
// call to them and back over channels; here a call without a body runs on
// the handler's goroutine alone, and one with a body writes it from a
// goroutine of its own (so that an upstream may answer, or stream, before
// the body is all sent), as the transport's writeLoop does.
//
// It writes requests with net/http's own writer (Request.Write) and reads
// answers with net/http's own parser (http.ReadResponse), so what goes on
// the wire is what http.Transport sends, byte for byte but for the order
// of one header (Accept-Encoding, which the transport adds the same way):
// forward_test.go proves it against httputil.ReverseProxy.
//
// h2c and https upstreams (where ALPN may pick HTTP/2) stay on Go's
// transports.
type http1Pool struct {
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	maxIdle int
	// idleTimeout closes a connection idle for this long (IdleConnTimeout).
	idleTimeout time.Duration

	mu sync.Mutex
	// addr is the address the idle connections lead to; a call to another
	// (a route's target changed) closes them.
	addr string
	// idle is a stack, most recently used last: busy periods reuse the
	// warmest connections, and the coldest idle out.
	idle  []*http1Conn
	sweep *time.Timer
}

func newHTTP1Pool(guard func(network, address string, c syscall.RawConn) error, maxIdle int) *http1Pool {
	dialer := &net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second, Control: guard}
	return &http1Pool{dial: dialer.DialContext, maxIdle: maxIdle, idleTimeout: IdleConnTimeout}
}

// http1Conn is one upstream connection.
type http1Conn struct {
	pool *http1Pool
	addr string
	conn net.Conn
	// traced is conn as the calls' trace gets it; endIO ends its blocked
	// I/O (a call's context hook, made once).
	traced *markedConn
	endIO  func()
	br     *bufio.Reader
	bw     *bufio.Writer
	// readLimit bounds what the answer's headers may take (the body is
	// not bounded); written counts the bytes written, to tell a request
	// that failed before any of it went out.
	readLimit int64
	written   int64
	idleSince time.Time
	reused    bool
	peek      [1]byte

	// Per call: stop undoes the call's context hook (which ends the
	// connection's I/O when the call is cancelled); wrote receives the
	// body writer's end (nil when the request had no body, or once read
	// into writeErr).
	stop     func() bool
	wrote    chan error
	writeErr error
	// continued decides a body awaiting 100 Continue: true sends it,
	// false drops it.
	continued chan bool
}

// Read is the buffered reader's source: while the headers are read it
// stops at readLimit, as the transport does.
func (pc *http1Conn) Read(p []byte) (int, error) {
	if pc.readLimit <= 0 {
		return 0, fmt.Errorf("read limit of %d bytes exhausted", MaxResponseHeaderBytes)
	}
	if int64(len(p)) > pc.readLimit {
		p = p[:pc.readLimit]
	}
	n, err := pc.conn.Read(p)
	pc.readLimit -= int64(n)
	return n, err
}

func (pc *http1Conn) Write(p []byte) (int, error) {
	n, err := pc.conn.Write(p)
	pc.written += int64(n)
	return n, err
}

// ReadFrom lets a body with a length go to the connection without the
// buffer's copy, as the transport's writer does.
func (pc *http1Conn) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.Copy(pc.conn, r)
	pc.written += n
	return n, err
}

// errNothingWritten marks a request that failed before a byte of it was
// written: it may be sent again on another connection.
type errNothingWritten struct{ error }

func (e errNothingWritten) Unwrap() error { return e.error }

// errNoAnswerByte marks a reused connection that gave no byte of an answer
// (the upstream closed it while idle): a request that may be replayed is
// sent again on a fresh one.
type errNoAnswerByte struct{ error }

func (e errNoAnswerByte) Unwrap() error { return e.error }

// RoundTrip sends req to its URL's host and returns the answer, whose body
// gives the connection back when read to its end and closed.
func (p *http1Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	for k, vv := range req.Header { // as the transport checks, before dialling
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, fmt.Errorf("net/http: invalid header field name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("net/http: invalid header field value for %q", k)
			}
		}
	}
	ctx := req.Context()
	trace := httptrace.ContextClientTrace(ctx)
	addr := req.URL.Host
	if req.URL.Port() == "" {
		addr = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	// Ask for gzip and decompress it, as the transport does: the caller
	// gets what it would through http.Transport.
	gzipped := req.Header["Accept-Encoding"] == nil && req.Header["Range"] == nil && req.Method != http.MethodHead
	if gzipped {
		req.Header["Accept-Encoding"] = acceptGzip
	}
	for retried := false; ; retried = true {
		pc, err := p.get(ctx, addr)
		if err != nil {
			return nil, err
		}
		if trace != nil && trace.GotConn != nil {
			trace.GotConn(httptrace.GotConnInfo{Conn: pc.traced, Reused: pc.reused})
		}
		resp, err := pc.roundTrip(ctx, req, trace)
		if err == nil {
			if gzipped && resp.Header.Get("Content-Encoding") == "gzip" {
				resp.Header.Del("Content-Encoding")
				resp.Header.Del("Content-Length")
				resp.ContentLength = -1
				resp.Uncompressed = true
				resp.Body = &gzipBody{body: resp.Body}
			}
			return resp, nil
		}
		pc.close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if retried || !pc.reused || !replayable(req, err) {
			return nil, err
		}
	}
}

var acceptGzip = []string{"gzip"}

// replayable reports whether a request that failed with err on a reused
// connection may go out again on another: only without a body (none is
// ever replayed), and when nothing was written or the method is
// idempotent and no byte of an answer came (the transport's rule).
func replayable(req *http.Request, err error) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	var nothing errNothingWritten
	if errors.As(err, &nothing) {
		return true
	}
	var noByte errNoAnswerByte
	if !errors.As(err, &noByte) {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Header["Idempotency-Key"] != nil || req.Header["X-Idempotency-Key"] != nil
}

// roundTrip writes req on pc and reads its answer, on this goroutine
// (the body, if any, from a writer goroutine of its own).
func (pc *http1Conn) roundTrip(ctx context.Context, req *http.Request, trace *httptrace.ClientTrace) (*http.Response, error) {
	pc.stop = context.AfterFunc(ctx, pc.endIO)
	pc.wrote, pc.writeErr, pc.continued = nil, nil, nil
	pc.written = 0
	if req.Body == nil || req.Body == http.NoBody {
		if err := pc.write(req); err != nil {
			return nil, err
		}
	} else {
		if httpguts.HeaderValuesContainsToken(req.Header["Expect"], "100-continue") {
			pc.continued = make(chan bool, 1)
			req.Body = &continueBody{ReadCloser: req.Body, continued: pc.continued}
		}
		wrote := make(chan error, 1)
		pc.wrote = wrote
		go func() {
			err := pc.write(req)
			if err != nil {
				_ = pc.conn.Close() // the answer is not read any further either
			}
			wrote <- err
		}()
	}

	pc.readLimit = MaxResponseHeaderBytes
	if _, err := pc.br.Peek(1); err != nil {
		return nil, pc.readError(errNoAnswerByte{err})
	}
	var resp *http.Response
	for {
		var err error
		if resp, err = http.ReadResponse(pc.br, req); err != nil {
			return nil, pc.readError(err)
		}
		code := resp.StatusCode
		if code == http.StatusContinue && pc.continued != nil {
			pc.continued <- true
			pc.continued = nil
		}
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			break
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, err
			}
			pc.readLimit = MaxResponseHeaderBytes // passed on: the next answer's headers may take as much
		}
	}
	pc.readLimit = 1<<63 - 1
	if pc.continued != nil {
		// A final answer without 100 Continue: the body goes only on a
		// connection that is kept (the transport's rule).
		pc.continued <- !resp.Close
		pc.continued = nil
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &upgradedConn{pc: pc}
		return resp, nil
	}
	if resp.Body == http.NoBody {
		pc.release(!resp.Close)
		return resp, nil
	}
	resp.Body = &http1Body{ReadCloser: resp.Body, pc: pc, keep: !resp.Close}
	return resp, nil
}

// readError is the error of a read that got no answer: the body writer's,
// when it failed (it closed the connection, which broke the read).
func (pc *http1Conn) readError(err error) error {
	if pc.readLimit <= 0 {
		err = fmt.Errorf("net/http: server response headers exceeded %d bytes; aborted", MaxResponseHeaderBytes)
	}
	if pc.wrote != nil {
		select {
		case werr := <-pc.wrote:
			pc.wrote = nil
			if werr != nil {
				return werr
			}
		default:
		}
	}
	return err
}

// release ends pc's call: back to the pool when keep says it may be reused
// and nothing else forbids it (the call's context ended the I/O, the body
// is still being written or failed), closed otherwise.
func (pc *http1Conn) release(keep bool) {
	if !pc.stop() {
		keep = false // the call was cancelled: a deadline is set
	}
	if pc.wrote != nil {
		select {
		case err := <-pc.wrote:
			keep = keep && err == nil
		default:
			keep = false // still writing: closing it ends the writer
		}
		pc.wrote = nil
	}
	if keep && pc.br.Buffered() == 0 {
		pc.pool.put(pc)
		return
	}
	pc.close()
}

func (pc *http1Conn) close() {
	pc.stop()
	_ = pc.conn.Close()
}

// get returns an idle connection to addr, or dials one.
func (p *http1Pool) get(ctx context.Context, addr string) (*http1Conn, error) {
	p.mu.Lock()
	if p.addr != addr {
		p.closeIdleLocked()
		p.addr = addr
	}
	for n := len(p.idle); n > 0; n = len(p.idle) {
		pc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if !pc.peerClosed() {
			pc.reused = true
			return pc, nil
		}
		_ = pc.conn.Close()
		p.mu.Lock()
	}
	p.mu.Unlock()
	conn, err := p.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	pc := &http1Conn{pool: p, addr: addr, conn: conn, traced: &markedConn{Conn: conn}}
	pc.endIO = func() { _ = conn.SetDeadline(aLongTimeAgo) }
	pc.br = bufio.NewReader(pc)
	pc.bw = bufio.NewWriter(pc)
	return pc, nil
}

// put keeps pc idle, unless the pool is full or leads elsewhere now.
func (p *http1Pool) put(pc *http1Conn) {
	pc.idleSince = time.Now()
	p.mu.Lock()
	if len(p.idle) >= p.maxIdle || pc.addr != p.addr {
		p.mu.Unlock()
		_ = pc.conn.Close()
		return
	}
	p.idle = append(p.idle, pc)
	if p.sweep == nil {
		p.sweep = time.AfterFunc(p.idleTimeout, p.closeIdledOut)
	}
	p.mu.Unlock()
}

// closeIdledOut closes the connections idle for idleTimeout, and comes
// back when the next one will be.
func (p *http1Pool) closeIdledOut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].idleSince) >= p.idleTimeout {
		_ = p.idle[n].conn.Close()
		n++
	}
	p.idle = append(p.idle[:0], p.idle[n:]...)
	clear(p.idle[len(p.idle):cap(p.idle)])
	if len(p.idle) == 0 {
		p.sweep = nil
		return
	}
	p.sweep.Reset(p.idleTimeout - now.Sub(p.idle[0].idleSince))
}

// CloseIdleConnections closes every idle connection.
func (p *http1Pool) CloseIdleConnections() {
	p.mu.Lock()
	p.closeIdleLocked()
	p.mu.Unlock()
}

func (p *http1Pool) closeIdleLocked() {
	for _, pc := range p.idle {
		_ = pc.conn.Close()
	}
	clear(p.idle)
	p.idle = p.idle[:0]
	if p.sweep != nil {
		p.sweep.Stop()
		p.sweep = nil
	}
}

// aLongTimeAgo is a deadline that has passed: setting it ends blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)
