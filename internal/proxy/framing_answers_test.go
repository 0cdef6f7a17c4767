package proxy

import (
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// smuggled is an answer hidden after another one: whoever reads it as the
// answer to a later call serves one caller what the upstream never sent it.
const smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

// upstreamFraming are the answers of the corpus, raw: what the raw
// upstream writes for the first request it reads (freshAnswer for every
// later one), to a caller's request of method (GET when empty). Then what
// the caller gets: the informational answers (interim), the final status
// (0: none, the connection closed) and body (but for the proxy's own error
// answers), cut: the body is cut short, the connection aborted; failure:
// the verdict is a failure (a success otherwise). leftover: the answer
// leaves bytes after itself on its connection, which must never be read as
// another answer. headersFirst: the proxy passes a stream's headers on
// before its first byte, where ReverseProxy may wait for that byte: when
// the body breaks before it, ReverseProxy's caller may get no answer at all.
// bareBreaks: ReverseProxy's handler panics on the answer (net/http's
// WriteHeader takes no status below 100), and its caller gets no answer.
var upstreamFraming = []struct {
	name         string
	method       string
	answer       rawAnswer
	interim      []int
	status       int
	body         string
	cut          bool
	failure      bool
	leftover     bool
	headersFirst bool
	bareBreaks   bool
}{
	{name: "a valid answer", status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"}},
	{name: "a valid 500", status: 500, body: "oops", failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"}},

	// Content-Length and Transfer-Encoding.
	{name: "Content-Length and Transfer-Encoding: chunked wins", status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"}},
	{name: "two different Content-Lengths", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", close: true}},
	{name: "two equal Content-Lengths", status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"}},
	{name: "a Content-Length with a plus sign", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", close: true}},
	{name: "a Content-Length beyond int64", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nhello", close: true}},
	{name: "Transfer-Encoding: gzip", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello", close: true}},
	{name: "Transfer-Encoding: chunked, identity", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", close: true}},
	{name: "Transfer-Encoding on HTTP/1.0 is ignored: the body ends at close", status: 200, body: "5\r\nhello\r\n0\r\n\r\n",
		answer: rawAnswer{raw: "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", close: true}},

	// Chunks: a broken body is found once the answer's headers are
	// passed on, and judged by them.
	{name: "a chunk size that is not hex", status: 200, cut: true, headersFirst: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", close: true}},
	{name: "a chunk size that overflows", status: 200, cut: true, headersFirst: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", close: true}},
	{name: "a negative chunk size", status: 200, cut: true, headersFirst: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", close: true}},
	{name: "a chunk larger than announced", status: 200, body: "hello", cut: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloworld\r\n0\r\n\r\n", close: true}},
	{name: "bare LF ending a chunk-size line", status: 200, cut: true, headersFirst: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", close: true}},
	{name: "the last chunk missing, then close", status: 200, body: "hello", cut: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", close: true}},
	{name: "chunk extensions are dropped", status: 200, body: "helloabc",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=1\r\nhello\r\n3;b=\"c d\"\r\nabc\r\n0;last\r\n\r\n"}},
	{name: "trailers", status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 5\r\nX-Late: 1\r\n\r\n"}},

	// Line endings, folding, header names and values.
	{name: "bare LF line endings", status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\nX-Bare: 1\nContent-Length: 5\n\nhello"}},
	{name: "obsolete line folding", status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 5\r\n\r\nhello"}},
	{name: "obsolete line folding in Content-Length", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n 0\r\n\r\nhelloworld", close: true}},
	{name: "a space before a header's colon: the header is dropped", status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nX-Bad : 1\r\nContent-Length: 5\r\n\r\nhello"}},
	{name: "a space before Content-Length's colon: no length, the body ends at close", status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nhello", close: true}},
	{name: "a space before Transfer-Encoding's colon: the length frames", status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello"}},
	{name: "a tab before a header's colon", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nX-Bad\t: 1\r\nContent-Length: 5\r\n\r\nhello", close: true}},
	{name: "NUL in a header value", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 5\r\n\r\nhello", close: true}},
	{name: "a header line without a colon", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nX-Bad\r\nContent-Length: 5\r\n\r\nhello", close: true}},
	{name: "headers beyond MaxResponseHeaderBytes", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", MaxResponseHeaderBytes) + "\r\nContent-Length: 5\r\n\r\nhello", close: true}},

	// The status line.
	{name: "a status code of four digits", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello", close: true}},
	{name: "a status line with a bad version", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1x 200 OK\r\nContent-Length: 5\r\n\r\nhello", close: true}},
	{name: "a status code below 100", status: 502, failure: true, bareBreaks: true,
		answer: rawAnswer{raw: "HTTP/1.1 000 Zero\r\nContent-Length: 5\r\n\r\nhello"}},
	{name: "a status code below 100 to HEAD", method: http.MethodHead, status: 502, failure: true, bareBreaks: true,
		answer: rawAnswer{raw: "HTTP/1.1 099 Low\r\n\r\n", close: true}},
	{name: "no status line at all", status: 502, failure: true,
		answer: rawAnswer{raw: "hello\r\n\r\n", close: true}},
	{name: "the connection closed without an answer", status: 502, failure: true,
		answer: rawAnswer{close: true}},
	{name: "the connection closed in the headers", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Le", close: true}},

	// Lengths, and what is left after an answer.
	{name: "a Content-Length longer than the body, then close: no answer", status: 0,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", close: true}},
	{name: "a Content-Length shorter than the body: the rest is no answer", status: 200, body: "hello", leftover: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + smuggled}},
	{name: "an answer nobody asked for, on the idle connection", status: 200, body: "hello", leftover: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", later: smuggled}},
	{name: "a body to HEAD", method: http.MethodHead, status: 200, leftover: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"}},
	{name: "a chunked body to HEAD", method: http.MethodHead, status: 200, leftover: true,
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nsmuggled\r\n0\r\n\r\n"}},
	{name: "a body to a 204", status: 204, leftover: true,
		answer: rawAnswer{raw: "HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\nsmuggled"}},
	{name: "a body to a 304", status: 304, leftover: true,
		answer: rawAnswer{raw: "HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\nsmuggled"}},
	{name: "HTTP/1.0 without a length: the body ends at close", status: 200, body: "hello world",
		answer: rawAnswer{raw: "HTTP/1.0 200 OK\r\n\r\nhello world", close: true}},
	{name: "HTTP/1.1 without a length: the body ends at close", status: 200, body: "hello world",
		answer: rawAnswer{raw: "HTTP/1.1 200 OK\r\n\r\nhello world", close: true}},

	// Informational answers and switching protocols.
	{name: "an informational answer, then the final one", interim: []int{103}, status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"}},
	{name: "100 Continue nobody asked for, then the final one", interim: []int{100}, status: 200, body: "hello",
		answer: rawAnswer{raw: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"}},
	{name: "an informational answer with a body", interim: []int{103}, status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", close: true}},
	{name: "101 Switching Protocols nobody asked for", status: 502, failure: true,
		answer: rawAnswer{raw: "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\nhello", close: true}},
}

// upstreamCall is what a caller got through one front: the informational
// answers and the final one, and then a second call's answer.
type upstreamCall struct {
	interim       []int
	final, second answer
	// closed: the connection closed before a final answer.
	closed bool
}

// Each answer of the corpus comes from a raw upstream, through the proxy
// and through a bare httputil.ReverseProxy with NewTransport (the
// benchmarks' baseline), to a raw caller: the caller
// must get the same from both (status, body, framing, where it is cut
// short), the verdict must be the answer's, and a second call, on the same
// caller connection when it is still open, must get a fresh answer from
// the upstream: never what an earlier answer left on its connection.
func TestUpstreamFramingAsReverseProxy(t *testing.T) {
	for _, tt := range upstreamFraming {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			var calls [2]upstreamCall
			for i, name := range []string{"ReverseProxy", "the proxy"} {
				t.Run(name, func(t *testing.T) {
					g := NewWithT(t)
					up := newRawUpstream(t, func(n int, _ string) rawAnswer {
						if n == 0 {
							return tt.answer
						}
						return rawAnswer{raw: freshAnswer}
					})
					var front string
					var f *fixture
					var b *breaker.Breaker
					if i == 0 {
						front = serveReverseProxy(t, up.url())
					} else {
						f = newFixture(t)
						b = f.add(t, "a", up.url(), breaker.Settings{FailureThreshold: 10})
						front = realServer(t, f)
					}
					c := dialCaller(g, front)
					defer func() { c.close() }()
					c.send(g, method+" /shop/a/x HTTP/1.1\r\nHost: p\r\n\r\n")
					call := &calls[i]
					for {
						a, err := c.read(method)
						if err != nil {
							g.Expect(isTimeout(err)).To(BeFalse(), "the connection hangs")
							call.closed = true
							break
						}
						if a.status >= 200 || a.status == http.StatusSwitchingProtocols {
							call.final = a
							break
						}
						call.interim = append(call.interim, a.status)
					}
					if f != nil {
						g.Eventually(func() int64 { rt, _ := f.table.get("shop/a"); return rt.inFlight.Load() }).Should(BeZero())
						successes, failures := verdicts(g, f.reg)
						if tt.failure {
							g.Expect([]int{successes, failures}).To(Equal([]int{0, 1}), "a failure")
							g.Expect(b.Snapshot().Failures).To(Equal(uint32(1)))
						} else {
							g.Expect([]int{successes, failures}).To(Equal([]int{1, 0}), "a success")
						}
					}
					if tt.answer.later != "" {
						g.Eventually(up.laterSent.Load).Should(Equal(int32(1)))
					}
					if tt.leftover {
						// net/http's Transport drops a connection with bytes
						// left over once its read loop gets to them, which a
						// call that comes at once may beat, and read them as
						// its answer (FuzzUpstreamAnswer finds it). The pause
						// is for that loop: a client without one must find
						// the bytes itself, however long they waited.
						time.Sleep(20 * time.Millisecond)
					}

					// A second call, on the same connection when it is still open.
					if call.closed || call.final.close || call.final.bodyErr != nil {
						c.close()
						c = dialCaller(g, front)
					}
					c.send(g, "GET /shop/a/x HTTP/1.1\r\nHost: p\r\n\r\n")
					second, err := c.read(http.MethodGet)
					g.Expect(err).NotTo(HaveOccurred(), "an answer to the second call")
					call.second = second
					g.Expect(second.status).To(Equal(200))
					g.Expect(string(second.body)).To(Equal("fresh"), "a fresh answer, not what an earlier one left behind")

					requests, _ := up.seen(g)
					g.Expect(requests).To(HaveLen(2), "one request per call")
					if tt.leftover {
						g.Expect(requests[1].conn).NotTo(Equal(requests[0].conn), "a connection with bytes left over is not used again")
					}
				})
			}

			g := NewWithT(t)
			bare, ours := calls[0], calls[1]
			g.Expect(ours.interim).To(Equal(bare.interim), "the informational answers")
			switch {
			case tt.bareBreaks:
				g.Expect(bare.closed).To(BeTrue(), "ReverseProxy's caller gets no answer")
			case tt.headersFirst:
				// ReverseProxy's first flush is on a timer of its own, which
				// races the body's first read.
				if !bare.closed {
					g.Expect(bare.final.status).To(Equal(ours.final.status), "or the same headers as the proxy's")
					g.Expect(bare.final.bodyErr).To(HaveOccurred(), "cut short as the proxy's")
				}
				g.Expect(ours.final.chunked).To(BeTrue(), "a stream")
			default:
				g.Expect(ours.closed).To(Equal(bare.closed), "no answer, as through ReverseProxy")
				g.Expect(ours.final.status).To(Equal(bare.final.status))
				g.Expect(ours.final.bodyErr != nil).To(Equal(bare.final.bodyErr != nil), "cut short as through ReverseProxy")
			}
			if !ours.closed && !bare.closed && bare.final.status != http.StatusBadGateway {
				g.Expect(string(ours.final.body)).To(Equal(string(bare.final.body)))
				g.Expect(ours.final.chunked).To(Equal(bare.final.chunked), "framed as through ReverseProxy")
				g.Expect(ours.final.contentLength).To(Equal(bare.final.contentLength), "framed as through ReverseProxy")
				g.Expect(ours.final.trailer).To(Equal(bare.final.trailer))
				for _, h := range []http.Header{ours.final.header, bare.final.header} {
					h.Del("Date")
					if head, _, _ := strings.Cut(strings.ToLower(tt.answer.raw), "\r\n\r\n"); !strings.Contains(head, "content-type") {
						// net/http's server sniffs one from the first bytes
						// written: ReverseProxy's streams get one, the
						// proxy's, whose headers go before them, do not.
						h.Del("Content-Type")
					}
				}
				g.Expect(ours.final.header).To(Equal(bare.final.header))
			}

			g.Expect(ours.interim).To(Equal(tt.interim))
			g.Expect(ours.closed).To(Equal(tt.status == 0), "no answer")
			g.Expect(ours.final.status).To(Equal(tt.status))
			if tt.status != http.StatusBadGateway {
				g.Expect(string(ours.final.body)).To(Equal(tt.body))
			}
			g.Expect(ours.final.bodyErr != nil).To(Equal(tt.cut), "cut short")
		})
	}
}

// An upstream's status below 100 (net/http's client takes any three
// digits) is a broken answer on either path, a call's and an upgrade's:
// the caller gets 502 and the upstream a failure, and the proxy does not
// panic writing it (found by FuzzUpstreamAnswer).
func TestStatusBelow100IsABrokenAnswer(t *testing.T) {
	for _, tt := range []struct{ name, request string }{
		{"a call", "GET /shop/a/x HTTP/1.1\r\nHost: p\r\n\r\n"},
		{"an upgrade", "GET /shop/a/ws HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			up := newRawUpstream(t, func(int, string) rawAnswer {
				return rawAnswer{raw: "HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", close: true}
			})
			f := newFixture(t)
			b := f.add(t, "a", up.url(), breaker.Settings{FailureThreshold: 1})
			c := dialCaller(g, realServer(t, f))
			defer c.close()
			c.send(g, tt.request)
			a, err := c.read(http.MethodGet)
			g.Expect(err).NotTo(HaveOccurred(), "an answer")
			g.Expect(a.status).To(Equal(http.StatusBadGateway))
			g.Expect(b.Snapshot().State).To(Equal(breaker.StateOpen), "the upstream's failure")
		})
	}
}

// serveReverseProxy serves bareReverseProxy (the benchmarks' baseline:
// ReverseProxy with NewTransport) to target, with the data plane's limits.
func serveReverseProxy(t *testing.T, target string) string {
	u, err := url.Parse(target)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	rp := bareReverseProxy(u).(*httputil.ReverseProxy)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	t.Cleanup(rp.Transport.(*http.Transport).CloseIdleConnections)
	return serveWith(t, rp)
}
