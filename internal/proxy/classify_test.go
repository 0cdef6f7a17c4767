package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// dialErr is what the transport returns when a dial fails with err.
func dialErr(err error) error {
	return &upstreamError{&net.OpError{Op: "dial", Net: "tcp", Err: err}}
}

func TestClassifyError(t *testing.T) {
	refused := &errDialRefused{ip: net.ParseIP("127.0.0.1"), why: "loopback"}
	tests := []struct {
		name    string
		err     error
		end     callEnd
		class   errorClass
		status  int
		outcome outcome
		kind    string
		detail  string
	}{
		{name: "the request timeout fired", err: &upstreamError{context.Canceled}, end: callEnd{cause: errRequestTimeout},
			class: classTimeout, status: 504, outcome: failure, kind: "timeout"},
		{name: "the request timeout fired before the transport was asked", err: errors.New("context canceled"), end: callEnd{cause: errRequestTimeout},
			class: classTimeout, status: 504, outcome: failure, kind: "timeout"},
		{name: "a transport deadline ran out", err: dialErr(context.DeadlineExceeded),
			class: classTimeout, status: 504, outcome: failure, kind: "timeout"},
		{name: "the caller left", err: &upstreamError{context.Canceled}, end: callEnd{callerGone: true, cause: context.Canceled},
			class: classCallerGone, status: 499, outcome: noVerdict},
		{name: "the caller left as the request timeout fired", err: &upstreamError{context.DeadlineExceeded},
			end:   callEnd{callerGone: true, cause: errRequestTimeout},
			class: classCallerGone, status: 499, outcome: noVerdict},
		{name: "the caller's body broke", err: &upstreamError{io.ErrUnexpectedEOF}, end: callEnd{bodyBroke: true},
			class: classBodyBroke, status: 400, outcome: noVerdict},
		{name: "the caller's body broke and the caller left", err: &upstreamError{context.Canceled}, end: callEnd{bodyBroke: true, callerGone: true},
			class: classBodyBroke, status: 400, outcome: noVerdict},
		{name: "the upgrade broke after its 101", err: errors.New("copy failed"), end: callEnd{judged: true},
			class: classUpgradeBroke, status: 502, outcome: noVerdict},
		{name: "an unasked 101", err: &upstreamError{errUnaskedUpgrade},
			class: classConnError, status: 502, outcome: failure, kind: "connection error"},
		{name: "HTTP/2 headers beyond the peer's bound",
			err: &upstreamError{fmt.Errorf("http2: %w", errors.New("request header list larger than peer's advertised limit"))},
			end: callEnd{unsent: true}, class: classRefusedLocally, status: 431, outcome: noVerdict,
			detail: "http2: request header list larger than peer's advertised limit"},
		{name: "a header HTTP/2 forbids", err: &upstreamError{errors.New(`http2: invalid Upgrade request header: ["foo"]`)},
			end: callEnd{unsent: true}, class: classRefusedLocally, status: 400, outcome: noVerdict,
			detail: `http2: invalid Upgrade request header: ["foo"]`},
		{name: "the connection failing before the headers went",
			err: &upstreamError{&net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.EPIPE)}},
			end: callEnd{unsent: true}, class: classConnError, status: 502, outcome: failure, kind: "connection error"},
		{name: "an HTTP/2 connection closing before the headers went", err: &upstreamError{errors.New("http2: client connection lost")},
			end: callEnd{unsent: true}, class: classConnError, status: 502, outcome: failure, kind: "connection error"},
		{name: "no stream slot before the request timeout", err: &upstreamError{context.Canceled},
			end: callEnd{unsent: true, cause: errRequestTimeout}, class: classTimeout, status: 504, outcome: failure, kind: "timeout"},
		{name: "the dial guard refused the address", err: dialErr(refused),
			class: classDialRefused, status: 502, outcome: noVerdict, detail: "loopback"},
		{name: "a request ReverseProxy would not forward", err: errors.New("unsupported protocol scheme"),
			class: classMalformed, status: 400, outcome: noVerdict, detail: "unsupported protocol scheme"},
		{name: "a refused connection", err: dialErr(os.NewSyscallError("connect", syscall.ECONNREFUSED)),
			class: classConnRefused, status: 502, outcome: failure, kind: "connection refused"},
		{name: "a reset connection", err: &upstreamError{&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}},
			class: classConnReset, status: 502, outcome: failure, kind: "connection reset"},
		{name: "a name that does not resolve", err: dialErr(&net.DNSError{Err: "no such host", Name: "order-api.shop.svc", IsNotFound: true}),
			class: classDNS, status: 502, outcome: failure, kind: "dns error"},
		{name: "a certificate of an unknown authority",
			err:   &upstreamError{&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}},
			class: classCertificate, status: 502, outcome: failure, kind: "certificate verification failed",
			detail: "x509: certificate signed by unknown authority"},
		{name: "a certificate for another name",
			err:   &upstreamError{&tls.CertificateVerificationError{Err: x509.HostnameError{Certificate: &x509.Certificate{}, Host: "api.shop.svc"}}},
			class: classCertificate, status: 502, outcome: failure, kind: "certificate verification failed",
			detail: "x509: certificate is not valid for any names, but wanted to match api.shop.svc"},
		{name: "a TLS handshake with a plain-text upstream", err: &upstreamError{tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}},
			class: classConnError, status: 502, outcome: failure, kind: "connection error"},
		{name: "an answer cut short", err: &upstreamError{io.ErrUnexpectedEOF},
			class: classConnError, status: 502, outcome: failure, kind: "connection error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			v := classifyError(tt.err, tt.end)
			g.Expect(v).To(Equal(errorVerdict{class: tt.class, status: tt.status, detail: tt.detail}))
			g.Expect(v.class.outcome()).To(Equal(tt.outcome))
			g.Expect(v.class.kind()).To(Equal(tt.kind))
		})
	}
}

func TestClassifyAnswer(t *testing.T) {
	codes, err := ParseStatusCodes([]string{"429", "5xx"})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	tests := []struct {
		name    string
		status  int
		ownLoop bool
		want    outcome
	}{
		{name: "2xx is a success", status: 200, want: success},
		{name: "404 is a success when not listed", status: 404, want: success},
		{name: "500 is a failure when listed", status: 500, want: failure},
		{name: "429 is a failure when listed", status: 429, want: failure},
		{name: "our own loop answer is no verdict", status: 508, ownLoop: true, want: noVerdict},
		{name: "an upstream's own 508 is its answer", status: 508, want: failure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: tt.status, Header: http.Header{}}
			NewWithT(t).Expect(classifyAnswer(resp, &codes, tt.ownLoop)).To(Equal(tt.want))
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	for _, tc := range []struct {
		value string
		want  time.Duration
	}{
		{"", 0},
		{"120", 2 * time.Minute},
		{"0", 0},
		{"-5", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"99999999999", 24 * time.Hour},
	} {
		t.Run(tc.value, func(t *testing.T) {
			NewWithT(t).Expect(parseRetryAfter(tc.value, clock)).To(Equal(tc.want))
		})
	}
}
