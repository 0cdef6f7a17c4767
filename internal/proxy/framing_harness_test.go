package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
)

// wire keeps every byte read from a connection beneath a bufio.Reader, so
// that each message's exact bytes can be cut out of what was read.
type wire struct {
	conn net.Conn
	got  bytes.Buffer
	br   *bufio.Reader
}

func newWire(conn net.Conn) *wire {
	w := &wire{conn: conn}
	w.br = bufio.NewReader(io.TeeReader(conn, &w.got))
	return w
}

// at is how many bytes were consumed so far; since returns those consumed
// from offset off on.
func (w *wire) at() int              { return w.got.Len() - w.br.Buffered() }
func (w *wire) since(off int) []byte { return bytes.Clone(w.got.Bytes()[off:w.at()]) }

// request is what net/http's parser made of one request, body read.
type request struct {
	method, uri   string
	header        http.Header
	contentLength int64 // -1: chunked
	body          []byte
	bodyErr       error
	trailer       http.Header
}

func readRequestOf(r *http.Request) request {
	body, err := io.ReadAll(r.Body)
	return request{method: r.Method, uri: r.RequestURI, header: r.Header.Clone(), contentLength: r.ContentLength,
		body: body, bodyErr: err, trailer: r.Trailer.Clone()}
}

// wireRequest is a request as a raw upstream got it: which of its
// connections (from 0) it came on, and its exact bytes.
type wireRequest struct {
	request
	conn int
	raw  []byte
}

// rawAnswer is what a raw upstream writes for one request: raw, then, on
// the connection kept open, later after a pause (bytes nobody asked for);
// close hangs up after raw.
type rawAnswer struct {
	raw, later string
	close      bool
}

// The raw upstream's plain answers.
const (
	okAnswer    = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	freshAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"
)

// rawUpstream is an upstream on a loopback TCP port that reads each
// request with net/http's parser and writes answer(n, uri) for the n-th
// request it read (from 0, over all its connections), to uri.
type rawUpstream struct {
	listener net.Listener
	answer   func(n int, uri string) rawAnswer
	// pending counts requests whose head is read and whose body is not yet.
	pending   atomic.Int32
	laterSent atomic.Int32
	mu        sync.Mutex
	requests  []wireRequest
	conns     []net.Conn
	// hungUp says, per connection, that its other end (the proxy) closed it.
	hungUp []bool
	// malformed is what it got that net/http does not parse as a request.
	malformed [][]byte
}

func newRawUpstream(t testing.TB, answer func(n int, uri string) rawAnswer) *rawUpstream {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	u := &rawUpstream{listener: l, answer: answer}
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			id := len(u.conns)
			u.conns = append(u.conns, conn)
			u.hungUp = append(u.hungUp, false)
			u.mu.Unlock()
			go u.serve(conn, id)
		}
	}()
	t.Cleanup(u.close)
	return u
}

func (u *rawUpstream) url() string { return "http://" + u.listener.Addr().String() }

func (u *rawUpstream) close() {
	_ = u.listener.Close()
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, c := range u.conns {
		_ = c.Close()
	}
}

func (u *rawUpstream) serve(conn net.Conn, id int) {
	defer conn.Close()
	w := newWire(conn)
	defer func() {
		u.mu.Lock()
		u.hungUp[id] = true // or its read deadline passed
		u.mu.Unlock()
	}()
	for {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := w.at()
		r, err := http.ReadRequest(w.br)
		if err != nil {
			if rest := w.got.Bytes()[start:]; len(rest) > 0 {
				u.mu.Lock()
				u.malformed = append(u.malformed, bytes.Clone(rest))
				u.mu.Unlock()
			}
			return
		}
		u.pending.Add(1)
		req := wireRequest{request: readRequestOf(r), conn: id}
		req.raw = w.since(start)
		u.mu.Lock()
		n := len(u.requests)
		u.requests = append(u.requests, req)
		u.mu.Unlock()
		u.pending.Add(-1)
		if req.bodyErr != nil {
			return
		}
		a := u.answer(n, req.uri)
		if _, err := io.WriteString(conn, a.raw); err != nil {
			return
		}
		if a.close {
			// Hung up, as a server that closes does (half: so that it
			// sees when the proxy hangs up too).
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			_, _ = io.Copy(io.Discard, w.br)
			return
		}
		if a.later != "" {
			time.Sleep(20 * time.Millisecond)
			_, _ = io.WriteString(conn, a.later)
			u.laterSent.Add(1)
		}
	}
}

// awaitHangUp waits at most d for the proxy to close the connection that
// the request to uri came on (false: it did not).
func (u *rawUpstream) awaitHangUp(uri string, d time.Duration) bool {
	for end := time.Now().Add(d); ; time.Sleep(100 * time.Microsecond) {
		u.mu.Lock()
		hungUp := false
		for _, r := range u.requests {
			if r.uri == uri {
				hungUp = u.hungUp[r.conn]
			}
		}
		u.mu.Unlock()
		if hungUp || time.Now().After(end) {
			return hungUp
		}
	}
}

// forget forgets the requests read so far (each fuzzed call's).
func (u *rawUpstream) forget() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.requests, u.malformed = nil, nil
}

// seen returns the requests the upstream read, once none is half read,
// and how many connections it accepted.
func (u *rawUpstream) seen(g Gomega) (requests []wireRequest, conns int) {
	g.Eventually(u.pending.Load).Should(BeZero())
	u.mu.Lock()
	defer u.mu.Unlock()
	g.Expect(u.malformed).To(BeEmpty(), "the upstream got bytes that are no request")
	return append([]wireRequest(nil), u.requests...), len(u.conns)
}

// answer is what a caller read of one answer.
type answer struct {
	status        int
	raw           []byte
	header        http.Header
	contentLength int64
	chunked       bool
	body          []byte
	// bodyErr: the body was cut short, the connection aborted.
	bodyErr error
	trailer http.Header
	close   bool
}

// callerConn is a caller's raw connection; a read waits for at most wait
// (5s when 0).
type callerConn struct {
	w    *wire
	wait time.Duration
}

func dialCaller(g Gomega, addr string) *callerConn {
	conn, err := net.Dial("tcp", addr)
	g.Expect(err).NotTo(HaveOccurred())
	return &callerConn{w: newWire(conn)}
}

func (c *callerConn) close() { _ = c.w.conn.Close() }

func (c *callerConn) send(g Gomega, raw string) {
	_, err := io.WriteString(c.w.conn, raw)
	g.Expect(err).NotTo(HaveOccurred())
}

// read reads the next answer to a request of method; an error is the
// connection's end (closed, reset) or a read that timed out.
func (c *callerConn) read(method string) (answer, error) {
	wait := c.wait
	if wait == 0 {
		wait = 5 * time.Second
	}
	_ = c.w.conn.SetReadDeadline(time.Now().Add(wait))
	start := c.w.at()
	resp, err := http.ReadResponse(c.w.br, &http.Request{Method: method})
	if err != nil {
		return answer{}, err
	}
	body, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, raw: c.w.since(start), header: resp.Header, contentLength: resp.ContentLength,
		chunked: len(resp.TransferEncoding) > 0, body: body, bodyErr: err, trailer: resp.Trailer, close: resp.Close}, nil
}

// exchange writes raw on a new connection to addr and reads every answer
// until the connection ends.
func exchange(g Gomega, addr, raw string) []answer {
	c := dialCaller(g, addr)
	defer c.close()
	c.send(g, raw)
	var answers []answer
	for {
		a, err := c.read(http.MethodPost)
		if err != nil {
			g.Expect(isTimeout(err)).To(BeFalse(), "the connection hangs: %v", err)
			return answers
		}
		answers = append(answers, a)
		if a.close || a.bodyErr != nil {
			return answers
		}
	}
}

func isTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// serveWith serves h on a loopback TCP port with the data plane's limits
// (NewServer), as realServer serves the proxy, logging nothing.
func serveWith(t testing.TB, h http.Handler) string {
	srv := httptest.NewUnstartedServer(h)
	srv.Config = NewServer("", h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// referenceHeader marks the reference handler's answers, to tell them from
// those net/http's server writes itself.
const referenceHeader = "X-Reference"

// referenceServer is net/http's server with the data plane's limits and a
// trivial handler that reads each request whole: 200 when its body
// arrived, 400 closing the connection when it broke. It keeps what it read.
func referenceServer(t *testing.T) (addr string, read func() []request) {
	var mu sync.Mutex
	var requests []request
	addr = serveWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := readRequestOf(r)
		mu.Lock()
		requests = append(requests, req)
		mu.Unlock()
		w.Header().Set(referenceHeader, "1")
		if req.bodyErr != nil {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	return addr, func() []request {
		mu.Lock()
		defer mu.Unlock()
		return append([]request(nil), requests...)
	}
}

var verdictLine = regexp.MustCompile(`circuitbreaker_requests_total\{name="a",namespace="shop",outcome="(success|failure)"\} (\d+)`)

// verdicts counts breaker shop/a's verdicts, as its metrics say.
func verdicts(g Gomega, reg *prometheus.Registry) (success, failure int) {
	for _, m := range verdictLine.FindAllStringSubmatch(scrape(g, reg), -1) {
		n, _ := strconv.Atoi(m[2])
		if m[1] == "success" {
			success = n
		} else {
			failure = n
		}
	}
	return success, failure
}

// framing returns the framing header lines (Content-Length,
// Transfer-Encoding) of a message's raw head.
func framing(raw []byte) []string {
	head, _, _ := bytes.Cut(raw, []byte("\r\n\r\n"))
	var lines []string
	for _, line := range strings.Split(string(head), "\r\n")[1:] {
		name, _, _ := strings.Cut(line, ":")
		if strings.EqualFold(name, "Content-Length") || strings.EqualFold(name, "Transfer-Encoding") {
			lines = append(lines, line)
		}
	}
	return lines
}

// chunkLines returns the chunk-size lines of a chunked message's raw body.
func chunkLines(raw []byte) []string {
	_, body, _ := bytes.Cut(raw, []byte("\r\n\r\n"))
	var lines []string
	for len(body) > 0 {
		line, rest, ok := bytes.Cut(body, []byte("\r\n"))
		if !ok {
			break
		}
		lines = append(lines, string(line))
		size, err := strconv.ParseUint(string(line), 16, 63)
		if err != nil || size == 0 || uint64(len(rest)) < size+2 {
			break
		}
		body = rest[size+2:]
	}
	return lines
}

// The request line and headers that most cases start with.
const (
	postX = "POST /shop/a/x HTTP/1.1\r\nHost: p\r\n"
	getX  = "GET /shop/a/x HTTP/1.1\r\nHost: p\r\n"
)
