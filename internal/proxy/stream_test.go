package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// A stream whose first bytes are late still gets its headers to the caller
// at once (after StreamHeaderDelay), typed as the upstream typed it or not
// at all, and framed as a stream.
func TestStreamHeadersDoNotWaitForTheFirstBytes(t *testing.T) {
	for _, typ := range []string{"text/event-stream", ""} {
		t.Run("Content-Type "+typ, func(t *testing.T) {
			g := NewWithT(t)
			release := make(chan struct{})
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if typ != "" {
					w.Header().Set("Content-Type", typ)
				}
				w.WriteHeader(http.StatusOK)
				http.NewResponseController(w).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				_, _ = io.WriteString(w, "<html>late</html>")
			}))
			t.Cleanup(up.Close)
			f := newFixture(t)
			f.add(t, "x", up.URL, breaker.Settings{})

			resp, err := http.Get(f.proxy.URL + "/shop/x/")
			g.Expect(err).NotTo(HaveOccurred(), "the headers arrive while the upstream holds back every byte")
			defer resp.Body.Close()
			g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
			g.Expect(resp.ContentLength).To(Equal(int64(-1)))
			g.Expect(resp.TransferEncoding).To(Equal([]string{"chunked"}))
			g.Expect(resp.Header.Values("Content-Type")).To(Equal(map[bool][]string{true: {typ}, false: nil}[typ != ""]),
				"no type sniffed from the body")
			close(release)
			body, err := io.ReadAll(resp.Body)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(string(body)).To(Equal("<html>late</html>"))
		})
	}
}

// A stream whose first bytes come with its headers gets no type sniffed
// from them either.
func TestStreamsGetNoSniffedType(t *testing.T) {
	g := NewWithT(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = nil // the upstream sends no type
		_, _ = io.WriteString(w, "<html>at once</html>")
		http.NewResponseController(w).Flush() // no length: chunked
	}))
	t.Cleanup(up.Close)
	f := newFixture(t)
	f.add(t, "x", up.URL, breaker.Settings{})
	resp, body := f.get(t, "/shop/x/")
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(body).To(Equal("<html>at once</html>"))
	g.Expect(resp.Header.Values("Content-Type")).To(BeEmpty())
}
