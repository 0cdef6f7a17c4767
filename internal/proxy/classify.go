package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Classification is pure: these functions read what a call's end left
// behind (an answer, or an error and the call's own signals) and say what
// it means, for the breaker and for the caller. The call's answer and fail
// methods act on what they say.

// outcome is what a call's end means for its breaker.
type outcome uint8

const (
	// noVerdict is the caller's doing, or nobody's: the call gives its
	// probe slot back.
	noVerdict outcome = iota
	success
	failure
)

// errorClass is what left a call without a response.
type errorClass uint8

const (
	// classUpgradeBroke: ReverseProxy gave up after the response was
	// classified (an upgrade that failed after its 101): one call, one verdict.
	classUpgradeBroke errorClass = iota + 1
	// classBodyBroke: the caller's request body broke or stopped arriving.
	classBodyBroke
	// classCallerGone: the caller left.
	classCallerGone
	// classDialRefused: the dial guard refused the upstream's address.
	classDialRefused
	// classMalformed: a request ReverseProxy would not forward at all.
	classMalformed
	// classRefusedLocally: the transport, connected, would not send the
	// request (HTTP/2's header rules and the peer's header list bound).
	classRefusedLocally

	// The upstream side's failures, from here on.

	// classTimeout: no response headers within the request timeout, or a
	// deadline of the transport's (dial, TLS handshake) ran out.
	classTimeout
	// classConnRefused: the upstream refused the connection.
	classConnRefused
	// classConnReset: the upstream reset the connection.
	classConnReset
	// classDNS: the upstream's name did not resolve.
	classDNS
	// classCertificate: the upstream's TLS certificate did not verify
	// (an unknown authority, another name, expired).
	classCertificate
	// classConnError: any other error dialing or talking to the upstream
	// (a TLS error, a broken answer, ...).
	classConnError
)

// failureKinds name the upstream side's failures (breaker.Failure's Kind).
var failureKinds = [...]string{
	classTimeout:     "timeout",
	classConnRefused: "connection refused",
	classConnReset:   "connection reset",
	classDNS:         "dns error",
	classCertificate: "certificate verification failed",
	classConnError:   "connection error",
}

// outcome is what the class means for the breaker: only what the upstream
// side did is a failure.
func (k errorClass) outcome() outcome {
	if k >= classTimeout {
		return failure
	}
	return noVerdict
}

// kind names a failure; "" for a class that is none.
func (k errorClass) kind() string {
	if int(k) < len(failureKinds) {
		return failureKinds[k]
	}
	return ""
}

// callEnd is what a call that got no response knows of its own end,
// besides the error the transport returned.
type callEnd struct {
	// judged: the answer was classified already.
	judged bool
	// bodyBroke: the caller's body failed, or was still awaited.
	bodyBroke bool
	// callerGone: the caller's context ended.
	callerGone bool
	// unsent: the transport had a connection and wrote no headers to it.
	unsent bool
	// cause is why the call's own context ended (errRequestTimeout, ...).
	cause error
}

// errorVerdict is the classification of a call that got no response.
type errorVerdict struct {
	class errorClass
	// status is what the caller gets.
	status int
	// detail is the dial guard's reason (classDialRefused), the error
	// (classMalformed, classRefusedLocally) or why the certificate did not
	// verify (classCertificate); "" otherwise.
	detail string
}

// classifyError classifies a call that got no response: err is what
// ReverseProxy or the transport returned, end what the call knows of its
// end. Only what the upstream side did is a failure: a timeout waiting for
// it, or an error dialing or talking to it. What the caller caused is no
// verdict: a caller that left, a request body that broke or stopped
// arriving, or a request ReverseProxy would not forward at all. It has no
// side effects.
func classifyError(err error, end callEnd) errorVerdict {
	var fromUpstream *upstreamError
	var refused *errDialRefused
	switch {
	case end.judged:
		return errorVerdict{class: classUpgradeBroke, status: http.StatusBadGateway}
	case end.bodyBroke:
		return errorVerdict{class: classBodyBroke, status: http.StatusBadRequest}
	case end.callerGone:
		return errorVerdict{class: classCallerGone, status: 499} // nobody reads it: the caller is gone
	case errors.As(err, &refused):
		return errorVerdict{class: classDialRefused, status: http.StatusBadGateway, detail: refused.why}
	case !errors.As(err, &fromUpstream) && !errors.Is(end.cause, errRequestTimeout):
		return errorVerdict{class: classMalformed, status: http.StatusBadRequest, detail: err.Error()}
	case end.unsent && !errors.Is(end.cause, errRequestTimeout) && !connectionError(err):
		status := http.StatusBadRequest
		if strings.Contains(err.Error(), headerListTooLarge) {
			status = http.StatusRequestHeaderFieldsTooLarge
		}
		return errorVerdict{class: classRefusedLocally, status: status, detail: err.Error()}
	}
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	switch {
	case errors.As(err, &certErr):
		return errorVerdict{class: classCertificate, status: http.StatusBadGateway, detail: certErr.Err.Error()}
	case errors.Is(end.cause, errRequestTimeout) || errors.Is(err, context.DeadlineExceeded):
		return errorVerdict{class: classTimeout, status: http.StatusGatewayTimeout}
	case errors.Is(err, syscall.ECONNREFUSED):
		return errorVerdict{class: classConnRefused, status: http.StatusBadGateway}
	case errors.Is(err, syscall.ECONNRESET):
		return errorVerdict{class: classConnReset, status: http.StatusBadGateway}
	case errors.As(err, &dnsErr):
		return errorVerdict{class: classDNS, status: http.StatusBadGateway}
	}
	return errorVerdict{class: classConnError, status: http.StatusBadGateway}
}

// headerListTooLarge is how Go's HTTP/2 client refuses a request whose
// headers exceed the peer's SETTINGS_MAX_HEADER_LIST_SIZE (an unexported
// sentinel, wrapped: its text is all there is to match).
const headerListTooLarge = "header list larger than peer's advertised limit"

// connectionError reports whether err is the connection's: a network
// error, an early end of the stream, or HTTP/2's connection-level errors.
func connectionError(err error) bool {
	var netErr net.Error
	var errno syscall.Errno
	return errors.As(err, &netErr) || errors.As(err, &errno) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.HasPrefix(err.Error(), "http2: client conn")
}

// classifyAnswer is the breaker's verdict on an upstream's answer, which
// goes back to the caller whatever it is; ownLoop says the answer is this
// proxy's own loop answer (a verified mark, loop.go). It has no side effects.
func classifyAnswer(resp *http.Response, failureCodes *StatusCodes, ownLoop bool) outcome {
	switch {
	case ownLoop:
		// From the hop this call looped into: the upstream was never
		// asked, so there is no verdict.
		return noVerdict
	case failureCodes.Contains(resp.StatusCode):
		return failure
	}
	return success
}

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
