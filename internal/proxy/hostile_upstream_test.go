package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// An upstream's answer cannot steer the proxy: its state header does not
// reach the caller, its 508 is judged whatever loop header it carries, and
// a service that copies incoming headers onto its own calls through the
// proxy is forwarded, not taken for a loop.
func TestUpstreamsCannotSteerTheProxy(t *testing.T) {
	t.Run("a state header of the upstream's", func(t *testing.T) {
		g := NewWithT(t)
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set(StateHeader, "open")
			w.Header().Set(loopHeader, "1")
		}))
		defer up.Close()
		f := newFixture(t)
		f.add(t, "a", up.URL, breaker.Settings{})
		resp, _ := f.get(t, "/shop/a/")
		g.Expect(resp.StatusCode).To(Equal(200))
		g.Expect(resp.Header).NotTo(HaveKey(StateHeader))
		g.Expect(resp.Header).NotTo(HaveKey(loopHeader))
	})

	for _, forged := range []struct {
		name string
		mark func(r *http.Request) string
	}{
		{"a plain loop header", func(*http.Request) string { return "1" }},
		{"the hop mark echoed", func(r *http.Request) string { return r.Header.Get(hopHeader) }},
	} {
		t.Run("a 508 with "+forged.name, func(t *testing.T) {
			g := NewWithT(t)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set(loopHeader, forged.mark(r))
				w.WriteHeader(http.StatusLoopDetected)
			}))
			defer up.Close()
			f := newFixture(t)
			b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1})
			resp, _ := f.get(t, "/shop/a/")
			g.Expect(resp.StatusCode).To(Equal(http.StatusLoopDetected))
			g.Expect(resp.Header).NotTo(HaveKey(loopHeader))
			g.Expect(b.Snapshot().State).To(Equal(breaker.StateOpen), "the upstream's own 508 is a failure")
		})
	}

	t.Run("a service that copies incoming headers onto its calls", func(t *testing.T) {
		g := NewWithT(t)
		last := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "end") }))
		defer last.Close()
		f := newFixture(t)
		copying := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			req, _ := http.NewRequest(http.MethodGet, f.proxy.URL+"/shop/b/", nil)
			req.Header = r.Header.Clone() // Via and hop mark included
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			w.WriteHeader(resp.StatusCode)
			_, _ = io.Copy(w, resp.Body)
		}))
		defer copying.Close()
		f.add(t, "a", copying.URL, breaker.Settings{})
		f.add(t, "b", last.URL, breaker.Settings{})
		resp, body := f.get(t, "/shop/a/")
		g.Expect(resp.StatusCode).To(Equal(200), body)
		g.Expect(body).To(Equal("end"))
	})
}

func TestClimbs(t *testing.T) {
	for _, tt := range []struct {
		path string
		want bool
	}{
		{"", false}, {"/", false}, {"/orders/1", false}, {"/.well-known/x", false}, {"/a.b/c..d", false},
		{"/...", false}, {"/a//b", false},
		{"/..", true}, {"/../admin", true}, {"/a/../../admin", true}, {"/./x", true}, {"/a/.", true},
		{"/%2e%2e/admin", true}, {"/%2E./admin", true}, {"/..%2fadmin", true}, {"/..%5Cadmin", true}, {`/..\admin`, true},
		{"/%2e%2e%2e", false}, {"/%2f", false},
	} {
		NewWithT(t).Expect(climbs(tt.path)).To(Equal(tt.want), tt.path)
	}
}

// A caller's path cannot climb out of a URL upstream's base path; an
// upstream cannot flood the caller with informational answers.
func TestPathsAndInformationalAnswersAreBounded(t *testing.T) {
	t.Run("dot segments", func(t *testing.T) {
		g := NewWithT(t)
		up := newUpstream(t)
		f := newFixture(t)
		f.add(t, "a", up.URL+"/api", breaker.Settings{})
		addr := realServer(t, f)
		for _, path := range []string{"/shop/a/../../admin", "/shop/a/%2e%2e/admin", "/shop/a/x/..%2f..%2fadmin"} {
			g.Expect(rawExchange(g, addr, "GET "+path+" HTTP/1.1\r\nHost: p\r\n\r\n", false)).To(Equal(400), path)
		}
		g.Expect(up.hits.Load()).To(BeZero())
		resp, _ := f.get(t, "/shop/a/orders/1.json")
		g.Expect(resp.StatusCode).To(Equal(200))
		req, _ := up.lastRequest()
		g.Expect(req.URL.Path).To(Equal("/api/orders/1.json"))
	})

	t.Run("informational answers", func(t *testing.T) {
		tests := []struct {
			hints  int
			status int
			state  breaker.State
		}{
			{hints: maxInformational, status: 200, state: breaker.StateClosed},
			{hints: maxInformational + 1, status: 502, state: breaker.StateOpen},
		}
		for _, tt := range tests {
			g := NewWithT(t)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				for range tt.hints {
					w.Header().Set("Link", "</a.css>; rel=preload")
					w.WriteHeader(http.StatusEarlyHints)
				}
				_, _ = io.WriteString(w, "final")
			}))
			f := newFixture(t)
			b := f.add(t, "a", up.URL, breaker.Settings{FailureThreshold: 1})
			var hints int
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				Got1xxResponse: func(int, textproto.MIMEHeader) error { hints++; return nil },
			})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.proxy.URL+"/shop/a/", nil)
			resp, err := http.DefaultClient.Do(req)
			g.Expect(err).NotTo(HaveOccurred())
			resp.Body.Close()
			g.Expect(resp.StatusCode).To(Equal(tt.status), "%d hints", tt.hints)
			g.Expect(hints).To(BeNumerically("<=", maxInformational))
			g.Expect(b.Snapshot().State).To(Equal(tt.state))
			up.Close()
		}
	})
}
