package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

func TestForwardsRequestsIntact(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	f := newFixture(t)
	f.add(t, "order-api", up.URL+"/v1/", breaker.Settings{})

	req, _ := http.NewRequest(http.MethodPut, f.proxy.URL+"/shop/order-api/orders/42%2F7?x=1&y=two", strings.NewReader(`{"qty":3}`))
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(resp.Header.Get("X-Upstream")).To(Equal("yes"))
	g.Expect(string(body)).To(Equal("hello from /v1/orders/42/7"))
	got, gotBody := up.lastRequest()
	g.Expect(got.Method).To(Equal(http.MethodPut))
	g.Expect(got.URL.EscapedPath()).To(Equal("/v1/orders/42%2F7"))
	g.Expect(got.URL.RawQuery).To(Equal("x=1&y=two"))
	g.Expect(gotBody).To(Equal(`{"qty":3}`))
	g.Expect(got.Header.Get("X-Custom")).To(Equal("kept"))
	g.Expect(got.Header.Get("Content-Type")).To(Equal("application/json"))
	g.Expect(got.Header.Get("X-Forwarded-For")).To(Equal("127.0.0.1"))
	g.Expect(got.Header.Get("X-Forwarded-Host")).To(Equal(strings.TrimPrefix(f.proxy.URL, "http://")))
	g.Expect(got.Header.Get("X-Forwarded-Proto")).To(Equal("http"))
	g.Expect(got.Host).To(Equal(strings.TrimPrefix(up.URL, "http://")))

	_, body2 := f.get(t, "/shop/order-api")
	g.Expect(body2).To(Equal("hello from /v1"), "no path after the breaker name goes to the target path")
}

func TestUnknownAndMalformedPaths(t *testing.T) {
	f := newFixture(t)
	f.table.Refuse(breaker.NewKey("shop", "ext"), http.StatusForbidden, "spec.upstream.url is refused: the manager runs without --allow-url-upstreams")
	tests := []struct {
		path   string
		status int
		err    string
	}{
		{"/shop/missing/x", http.StatusNotFound, "circuit breaker 'shop/missing' not found"},
		{"/shop", http.StatusNotFound, "no circuit breaker here: use /<namespace>/<name>/<path>"},
		{"/", http.StatusNotFound, "no circuit breaker here"},
		{"//x", http.StatusNotFound, "no circuit breaker here"},
		{"/shop/ext/pay", http.StatusForbidden, "circuit breaker 'shop/ext' may not forward: spec.upstream.url is refused"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			g := NewWithT(t)
			resp, body := f.get(t, tt.path)
			g.Expect(resp.StatusCode).To(Equal(tt.status))
			g.Expect(resp.Header.Get("Content-Type")).To(Equal("application/json"))
			g.Expect(jsonError(g, body)).To(ContainSubstring(tt.err))
		})
	}
}

func TestSplitPath(t *testing.T) {
	tests := []struct {
		path, key, rest string
		ok              bool
	}{
		{"/shop/order-api/a/b", "shop/order-api", "/a/b", true},
		{"/shop/order-api", "shop/order-api", "", true},
		{"/shop/order-api/", "shop/order-api", "/", true},
		{"/shop/", "", "", false},
		{"/shop//x", "", "", false},
		{"shop/a/b", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			g := NewWithT(t)
			key, rest, ok := splitPath(tt.path)
			g.Expect(ok).To(Equal(tt.ok))
			g.Expect(string(key)).To(Equal(tt.key))
			g.Expect(rest).To(Equal(tt.rest))
		})
	}
}
