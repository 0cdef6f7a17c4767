package proxy

import (
	"net/http"
	"net/http/httptrace"
	"net/textproto"

	"golang.org/x/net/http/httpguts"
)

// write writes req and flushes it: a request without a body with
// writeHead, any other with net/http's own writer.
func (pc *http1Conn) write(req *http.Request) error {
	var err error
	if !pc.writeHead(req) {
		err = req.Write(pc.bw)
	}
	if err == nil {
		err = pc.bw.Flush()
	}
	if err != nil && pc.written == 0 {
		return errNothingWritten{err}
	}
	return err
}

// writeHead writes a request without a body as Request.Write would, in
// the buffer, without its formatting and header sort (the order of header
// fields of different names carries no meaning): the request line, Host,
// User-Agent, Content-Length: 0 for POST, PUT and PATCH, then the headers.
// It reports false, having written nothing, for whatever it leaves to
// Request.Write: a body, trailers, a Transfer-Encoding or Connection: close
// to add, CONNECT, a host to convert (non-ASCII) or to clean (an IPv6 zone,
// an invalid one), a URI with control bytes, a trace that follows header
// fields. RoundTrip has refused invalid header names and values already,
// so none has a line break to replace.
func (pc *http1Conn) writeHead(req *http.Request) bool {
	trace := httptrace.ContextClientTrace(req.Context())
	if req.Body != nil && req.Body != http.NoBody || req.Trailer != nil || len(req.TransferEncoding) > 0 || req.Close ||
		req.Method == http.MethodConnect || trace != nil && trace.WroteHeaderField != nil {
		return false
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !asciiHost(host) || !httpguts.ValidHostHeader(host) {
		return false
	}
	uri := req.URL.RequestURI()
	if hasCTL(uri) {
		return false
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	bw := pc.bw
	_, _ = bw.WriteString(method)
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(uri)
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(host)
	_, _ = bw.WriteString("\r\n")
	userAgent := "Go-http-client/1.1" // net/http's default, for a header without one
	if ua, ok := req.Header["User-Agent"]; ok {
		userAgent = ""
		if len(ua) > 0 {
			userAgent = textproto.TrimString(ua[0])
		}
	}
	if userAgent != "" {
		_, _ = bw.WriteString("User-Agent: ")
		_, _ = bw.WriteString(userAgent)
		_, _ = bw.WriteString("\r\n")
	}
	if method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch {
		_, _ = bw.WriteString("Content-Length: 0\r\n") // many servers expect one (net/http's rule)
	}
	for k, vv := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue // Request.Write's own, or not written
		}
		for _, v := range vv {
			_, _ = bw.WriteString(k)
			_, _ = bw.WriteString(": ")
			_, _ = bw.WriteString(textproto.TrimString(v))
			_, _ = bw.WriteString("\r\n")
		}
	}
	_, _ = bw.WriteString("\r\n")
	if trace != nil && trace.WroteHeaders != nil {
		trace.WroteHeaders()
	}
	if trace != nil && trace.WroteRequest != nil {
		trace.WroteRequest(httptrace.WroteRequestInfo{}) // flushed by write, whose error ends the call
	}
	return true
}

// asciiHost reports whether host needs neither IDNA conversion nor an IPv6
// zone removed (Request.Write's two rewrites of a host).
func asciiHost(host string) bool {
	for i := 0; i < len(host); i++ {
		if host[i] >= 0x80 || host[i] == '%' {
			return false
		}
	}
	return true
}

func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}
