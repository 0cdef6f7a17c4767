package proxy

import (
	"net/http"
	"strconv"
	"strings"
)

// gRPC through the proxy. A gRPC answer says how the call went in its
// grpc-status (in the trailers, or in the headers of a trailers-only
// answer), not in its HTTP status, which is 200 whatever happened; the
// proxy maps that status to an HTTP code as Envoy does and judges the
// code by failureStatusCodes, when the stream ends. A gRPC caller gets the
// proxy's own answers (a rejection, saturation, an unknown breaker) as
// trailers-only gRPC answers, which its client library understands.

// gRPC status codes (google.golang.org/grpc/codes).
const (
	grpcOK                 = 0
	grpcCancelled          = 1
	grpcUnknown            = 2
	grpcInvalidArgument    = 3
	grpcDeadlineExceeded   = 4
	grpcNotFound           = 5
	grpcAlreadyExists      = 6
	grpcPermissionDenied   = 7
	grpcResourceExhausted  = 8
	grpcFailedPrecondition = 9
	grpcAborted            = 10
	grpcOutOfRange         = 11
	grpcUnimplemented      = 12
	grpcInternal           = 13
	grpcUnavailable        = 14
	grpcDataLoss           = 15
	grpcUnauthenticated    = 16
)

// statusClientClosed is the HTTP code CANCELLED maps to (nginx's 499):
// the caller gave up, no verdict.
const statusClientClosed = 499

// grpcHTTPStatus maps gRPC status codes to HTTP codes as Envoy does
// (grpc::Utility::grpcToHttpStatus).
var grpcHTTPStatus = [...]int{
	grpcOK:                 http.StatusOK,
	grpcCancelled:          statusClientClosed,
	grpcUnknown:            http.StatusInternalServerError,
	grpcInvalidArgument:    http.StatusBadRequest,
	grpcDeadlineExceeded:   http.StatusGatewayTimeout,
	grpcNotFound:           http.StatusNotFound,
	grpcAlreadyExists:      http.StatusConflict,
	grpcPermissionDenied:   http.StatusForbidden,
	grpcResourceExhausted:  http.StatusTooManyRequests,
	grpcFailedPrecondition: http.StatusBadRequest,
	grpcAborted:            http.StatusConflict,
	grpcOutOfRange:         http.StatusBadRequest,
	grpcUnimplemented:      http.StatusNotImplemented,
	grpcInternal:           http.StatusInternalServerError,
	grpcUnavailable:        http.StatusServiceUnavailable,
	grpcDataLoss:           http.StatusInternalServerError,
	grpcUnauthenticated:    http.StatusUnauthorized,
}

// isGRPC reports whether a message's Content-Type is gRPC's
// (application/grpc, or application/grpc+proto and the like).
func isGRPC(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	rest, ok := strings.CutPrefix(ct[0], "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// grpcAnswerStatus is the HTTP code a gRPC answer's status maps to; ok is
// false when there is no grpc-status (the upstream broke the protocol).
// An unknown code is UNKNOWN's, as gRPC reads it.
func grpcAnswerStatus(h http.Header) (status int, ok bool) {
	v := h["Grpc-Status"]
	if len(v) == 0 {
		return 0, false
	}
	code, err := strconv.Atoi(v[0])
	if err != nil || code < 0 || code >= len(grpcHTTPStatus) {
		return http.StatusInternalServerError, true
	}
	return grpcHTTPStatus[code], true
}

// grpcCodeOf is the gRPC status a gRPC caller gets for one of the proxy's
// own HTTP answers, as gRPC's HTTP-to-gRPC mapping reads them.
func grpcCodeOf(status int) int {
	switch status {
	case http.StatusBadRequest, http.StatusRequestHeaderFieldsTooLarge:
		return grpcInternal
	case http.StatusUnauthorized:
		return grpcUnauthenticated
	case http.StatusForbidden:
		return grpcPermissionDenied
	case http.StatusNotFound:
		return grpcUnimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return grpcUnavailable
	}
	return grpcUnknown
}

// writeGRPC answers a gRPC caller with a trailers-only answer: HTTP 200,
// the status and message in the headers, no body.
func writeGRPC(w http.ResponseWriter, code int, message string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(code))
	h.Set("Grpc-Message", grpcMessage(message))
	w.WriteHeader(http.StatusOK)
}

// grpcMessage percent-encodes a grpc-message as the gRPC protocol asks:
// every byte outside printable ASCII, and '%'.
func grpcMessage(s string) string {
	const hex = "0123456789ABCDEF"
	plain := func(c byte) bool { return c >= 0x20 && c <= 0x7e && c != '%' }
	i := 0
	for i < len(s) && plain(s[i]) {
		i++
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		if c := s[i]; plain(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		}
	}
	return b.String()
}

// answerError answers the proxy's own errors: as JSON, or to a gRPC
// caller as the gRPC status the HTTP code maps to.
func answerError(w http.ResponseWriter, grpc bool, status int, message string) {
	if grpc {
		writeGRPC(w, grpcCodeOf(status), message)
		return
	}
	writeError(w, status, message)
}

// answerSaturated answers a call beyond a concurrency cap: 503 saturated,
// or RESOURCE_EXHAUSTED to a gRPC caller; no verdict either way.
func answerSaturated(w http.ResponseWriter, grpc bool, message string) {
	h := w.Header()
	h.Set(StateHeader, "saturated")
	h.Set("Retry-After", "1")
	if grpc {
		writeGRPC(w, grpcResourceExhausted, message)
		return
	}
	writeError(w, http.StatusServiceUnavailable, message)
}
