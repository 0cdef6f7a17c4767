package proxy

import (
	"strconv"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// The smuggling and framing corpus (issue 23): raw bytes from a caller,
// and raw answers from an upstream, each refused or re-framed exactly as
// net/http does. Every case is read off the wire on both sides of the
// proxy, so that it holds whatever client the proxy forwards with.

// callerFraming are the requests of the corpus, raw. forwarded is how many
// requests reach the upstream whole, refused the status of the answer
// net/http's server writes itself (0: none), broke that a body broke on
// the way (the caller gets 400, the upstream nothing whole).
var callerFraming = []struct {
	name      string
	raw       string
	forwarded int
	refused   int
	broke     bool
}{
	// Content-Length and Transfer-Encoding.
	{name: "Content-Length and Transfer-Encoding: chunked wins, the length is dropped", forwarded: 1,
		raw: postX + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding then a Content-Length that hides a request past the last chunk", forwarded: 2,
		raw: postX + "Transfer-Encoding: chunked\r\nContent-Length: 62\r\n\r\n0\r\n\r\n" +
			"GET /shop/a/smuggled HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"},
	{name: "a body longer than its Content-Length: the rest is the next request", forwarded: 2,
		raw: postX + "Content-Length: 5\r\n\r\nhelloGET /shop/a/next HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"},
	{name: "two different Content-Lengths", refused: 400,
		raw: postX + "Content-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!"},
	{name: "two equal Content-Lengths", forwarded: 1,
		raw: postX + "Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"},
	{name: "a Content-Length list", refused: 400,
		raw: postX + "Content-Length: 5, 5\r\nConnection: close\r\n\r\nhello"},
	{name: "a Content-Length with a plus sign", refused: 400,
		raw: postX + "Content-Length: +5\r\nConnection: close\r\n\r\nhello"},
	{name: "a negative Content-Length", refused: 400,
		raw: postX + "Content-Length: -5\r\nConnection: close\r\n\r\nhello"},
	{name: "a Content-Length with a space inside", refused: 400,
		raw: postX + "Content-Length: 1 0\r\nConnection: close\r\n\r\nhelloworld"},
	{name: "a Content-Length padded with spaces", forwarded: 1,
		raw: postX + "Content-Length:   5  \r\nConnection: close\r\n\r\nhello"},
	{name: "a hexadecimal Content-Length", refused: 400,
		raw: postX + "Content-Length: 0x5\r\nConnection: close\r\n\r\nhello"},
	{name: "a Content-Length beyond int64", refused: 400,
		raw: postX + "Content-Length: 99999999999999999999\r\nConnection: close\r\n\r\nhello"},
	{name: "Transfer-Encoding: gzip", refused: 501,
		raw: postX + "Transfer-Encoding: gzip\r\nConnection: close\r\n\r\nhello"},
	{name: "Transfer-Encoding: chunked, identity", refused: 501,
		raw: postX + "Transfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding: identity", refused: 501,
		raw: postX + "Transfer-Encoding: identity\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"},
	{name: "Transfer-Encoding: gzip, chunked", refused: 501,
		raw: postX + "Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
	{name: "two Transfer-Encoding headers", refused: 501,
		raw: postX + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding: CHUNKED", forwarded: 1,
		raw: postX + "Transfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding on HTTP/1.0 is ignored: the length frames", forwarded: 1,
		raw: "POST /shop/a/x HTTP/1.0\r\nHost: p\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"},

	// Obsolete line folding and bare LF.
	{name: "obsolete line folding in a header", forwarded: 1,
		raw: postX + "X-Folded: a\r\n b\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"},
	{name: "obsolete line folding in Content-Length", refused: 400,
		raw: postX + "Content-Length: 1\r\n 0\r\nConnection: close\r\n\r\nhelloworld"},
	{name: "Transfer-Encoding folded onto its next line", forwarded: 1,
		raw: postX + "Transfer-Encoding:\r\n chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
	{name: "a folded first header line", refused: 400,
		raw: "POST /shop/a/x HTTP/1.1\r\n X-Lead: 1\r\nHost: p\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"},
	{name: "bare LF line endings", forwarded: 1,
		raw: "POST /shop/a/x HTTP/1.1\nHost: p\nContent-Length: 5\nConnection: close\n\nhello"},
	{name: "bare LF ending a chunk-size line", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\nhello\r\n0\r\n\r\n"},
	{name: "bare LF ending chunk data", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\n0\r\n\r\n"},

	// Chunks.
	{name: "a chunk size that is not hex", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"},
	{name: "a chunk size that overflows", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n"},
	{name: "a negative chunk size", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"},
	{name: "a chunk size with 0x", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"},
	{name: "a chunk size after a space", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n 5\r\nhello\r\n0\r\n\r\n"},
	{name: "a chunk larger than announced", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhelloworld\r\n0\r\n\r\n"},
	{name: "chunk extensions are dropped", forwarded: 1,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;a=1\r\nhello\r\n3;b=\"c d\"\r\nabc\r\n0;last\r\n\r\n"},
	{name: "a chunk extension beyond net/http's line bound", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;x=" + strings.Repeat("a", 5000) + "\r\nhello\r\n0\r\n\r\n"},
	{name: "chunk extensions beyond net/http's overhead bound", broke: true,
		raw: postX + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
			strings.Repeat("1;x="+strings.Repeat("a", 1000)+"\r\nz\r\n", 20) + "0\r\n\r\n"},
	{name: "announced trailers", forwarded: 1,
		raw: postX + "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n"},

	// Header sizes and shapes, the request line.
	{name: "headers beyond MaxHeaderBytes", refused: 431,
		raw: getX + "X-Big: " + strings.Repeat("a", MaxHeaderBytes+8<<10) + "\r\nConnection: close\r\n\r\n"},
	{name: "headers just over MaxHeaderBytes, within net/http's slack", forwarded: 1,
		raw: getX + "X-Big: " + strings.Repeat("a", MaxHeaderBytes+1) + "\r\nConnection: close\r\n\r\n"},
	{name: "version HTTP/1.1x", refused: 400, raw: "GET /shop/a/x HTTP/1.1x\r\nHost: p\r\nConnection: close\r\n\r\n"},
	{name: "version HTTP/2.0 on HTTP/1", refused: 505, raw: "GET /shop/a/x HTTP/2.0\r\nHost: p\r\nConnection: close\r\n\r\n"},
	{name: "version HTTP/0.9", refused: 505, raw: "GET /shop/a/x HTTP/0.9\r\nHost: p\r\nConnection: close\r\n\r\n"},
	{name: "version HTTP/1.2", forwarded: 1, raw: "GET /shop/a/x HTTP/1.2\r\nHost: p\r\nConnection: close\r\n\r\n"},
	{name: "a lowercase version", refused: 400, raw: "GET /shop/a/x http/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"},
	{name: "no version", refused: 400, raw: "GET /shop/a/x\r\nHost: p\r\nConnection: close\r\n\r\n"},
	{name: "a space before a header's colon", refused: 400, raw: getX + "X-Bad : 1\r\nConnection: close\r\n\r\n"},
	{name: "a tab before a header's colon", refused: 400, raw: getX + "X-Bad\t: 1\r\nConnection: close\r\n\r\n"},
	{name: "a space before Content-Length's colon", refused: 400,
		raw: postX + "Content-Length : 5\r\nConnection: close\r\n\r\nhello"},
	{name: "a space before Transfer-Encoding's colon", refused: 400,
		raw: postX + "Transfer-Encoding : chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"},
	{name: "NUL in a header value", refused: 400, raw: getX + "X-Bad: a\x00b\r\nConnection: close\r\n\r\n"},
	{name: "CR in a header value", refused: 400, raw: getX + "X-Bad: a\rb\r\nConnection: close\r\n\r\n"},
	{name: "a header line without a colon", refused: 400, raw: getX + "X-Bad\r\nConnection: close\r\n\r\n"},
	{name: "no Host", refused: 400, raw: "GET /shop/a/x HTTP/1.1\r\nConnection: close\r\n\r\n"},
	{name: "two Hosts", refused: 400, raw: getX + "Host: q\r\nConnection: close\r\n\r\n"},
}

// Each request of the corpus goes to net/http's server with a trivial
// handler (the reference) and to the proxy, in front of a raw upstream.
// The proxy must answer what the reference answers, byte for byte where
// net/http's server answers itself; the upstream must get nothing when
// net/http refuses, nothing whole when a body breaks, and otherwise
// exactly what the reference's handler read, framed anew (one length or
// chunked, chunks without extensions). None of it is a failure of the
// upstream's.
func TestCallerFramingAsNetHTTP(t *testing.T) {
	for _, tt := range callerFraming {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			refAddr, refRead := referenceServer(t)
			want := exchange(g, refAddr, tt.raw)
			wantRequests := refRead()

			up := newRawUpstream(t, func(int, string) rawAnswer { return rawAnswer{raw: okAnswer} })
			f := newFixture(t)
			b := f.add(t, "a", up.url(), breaker.Settings{FailureThreshold: 1})
			got := exchange(g, realServer(t, f), tt.raw)
			g.Eventually(func() int64 { rt, _ := f.table.get("shop/a"); return rt.inFlight.Load() }).Should(BeZero())
			requests, conns := up.seen(g)

			// What the caller gets.
			g.Expect(got).To(HaveLen(len(want)), "as many answers as net/http gives")
			refused := 0
			for i, w := range want {
				if w.header.Get(referenceHeader) == "" {
					refused = w.status
					g.Expect(string(got[i].raw)).To(Equal(string(w.raw)), "answer %d: net/http's own, byte for byte", i)
					continue
				}
				g.Expect(got[i].status).To(Equal(w.status), "answer %d", i)
				g.Expect(got[i].close).To(Equal(w.close), "answer %d closes the connection as net/http's does", i)
			}
			g.Expect(refused).To(Equal(tt.refused), "net/http's own answer")

			// What the upstream gets.
			var whole []request
			broke := false
			for _, r := range wantRequests {
				if r.bodyErr != nil {
					broke = true
					continue
				}
				whole = append(whole, r)
			}
			g.Expect(broke).To(Equal(tt.broke), "a body broke")
			g.Expect(whole).To(HaveLen(tt.forwarded), "requests net/http reads whole")
			if len(wantRequests) == 0 {
				g.Expect(conns).To(BeZero(), "the upstream was not contacted")
			}
			var forwarded []wireRequest
			for _, r := range requests {
				if r.bodyErr == nil {
					forwarded = append(forwarded, r)
				}
			}
			g.Expect(forwarded).To(HaveLen(len(whole)), "the upstream got whole what net/http read whole, and nothing else")
			for i, r := range forwarded {
				expectForwarded(g, r, whole[i])
			}

			// The breaker's verdicts: a success for each forwarded call, no failure.
			s := b.Snapshot()
			g.Expect(s.State).To(Equal(breaker.StateClosed))
			g.Expect(s.Failures).To(BeZero())
			successes, failures := verdicts(g, f.reg)
			g.Expect(failures).To(BeZero())
			g.Expect(successes).To(Equal(len(whole)))
		})
	}
}

// expectForwarded checks a request as the upstream got it against what
// net/http's handler read of the caller's.
func expectForwarded(g Gomega, got wireRequest, want request) {
	g.Expect(got.method).To(Equal(want.method))
	g.Expect(got.uri).To(Equal(strings.TrimPrefix(want.uri, "/shop/a")))
	g.Expect(string(got.body)).To(Equal(string(want.body)), "the body, byte for byte")
	g.Expect(got.contentLength).To(Equal(want.contentLength), "framed as the caller's was: by length, or chunked (-1)")
	for k, vv := range want.header {
		if strings.HasPrefix(k, "X-") && !strings.HasPrefix(k, "X-Forwarded-") {
			g.Expect(got.header[k]).To(Equal(vv), "header %s", k)
		}
	}
	g.Expect(got.trailer).To(Equal(want.trailer), "the trailers")
	lines := framing(got.raw)
	switch {
	case want.contentLength < 0:
		g.Expect(lines).To(Equal([]string{"Transfer-Encoding: chunked"}), "chunked, with no length")
		for _, line := range chunkLines(got.raw) {
			g.Expect(line).To(MatchRegexp(`^[0-9a-fA-F]+$`), "chunk sizes without extensions")
		}
	case want.contentLength > 0:
		g.Expect(lines).To(Equal([]string{"Content-Length: " + strconv.FormatInt(want.contentLength, 10)}), "one length")
	default:
		g.Expect(lines).To(Or(BeEmpty(), Equal([]string{"Content-Length: 0"})), "no body")
	}
}
