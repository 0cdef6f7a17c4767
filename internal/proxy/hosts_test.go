package proxy

import (
	"io"
	"net/http"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// getHost is a GET of path on the proxy with Host host.
func (f *fixture) getHost(t *testing.T, host, path string) (*http.Response, string) {
	req, err := http.NewRequest(http.MethodGet, f.proxy.URL+path, nil)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// A call whose Host is an exposed Service's name, in any of the forms a
// caller in the cluster may use, goes to that breaker with its path
// unchanged.
func TestHostRoutesToTheExposedBreaker(t *testing.T) {
	f := newFixtureWith(t, Options{ClusterDomain: "cluster.local"})
	up := newUpstream(t)
	f.add(t, "orders", up.URL, breaker.Settings{})
	f.table.Expose(breaker.NewKey("shop", "orders"), "orders-breaker")

	for _, host := range []string{
		"orders-breaker.shop",
		"orders-breaker.shop.svc",
		"orders-breaker.shop.svc.cluster.local",
		"orders-breaker.shop.svc.cluster.local.",
		"orders-breaker.shop:8080",
		"orders-breaker.shop.svc.cluster.local:80",
		"Orders-Breaker.SHOP.Svc.Cluster.Local",
		"orders-breaker",
		"orders-breaker:8080",
		"orders-breaker.",
	} {
		t.Run(host, func(t *testing.T) {
			g := NewWithT(t)
			resp, body := f.getHost(t, host, "/v1/orders/7?x=1")
			g.Expect(resp.StatusCode).To(Equal(200), body)
			g.Expect(body).To(Equal("hello from /v1/orders/7"))
			last, _ := up.lastRequest()
			g.Expect(last.URL.RawQuery).To(Equal("x=1"))
			g.Expect(last.Header.Get("X-Forwarded-Host")).To(Equal(host))
		})
	}
}

func TestHostRouting(t *testing.T) {
	f := newFixtureWith(t, Options{ClusterDomain: "corp.example"})
	up := newUpstream(t)
	f.add(t, "orders", up.URL, breaker.Settings{})
	f.add(t, "billing", up.URL, breaker.Settings{})
	f.table.Expose(breaker.NewKey("shop", "orders"), "orders-breaker")
	f.table.Expose(breaker.NewKey("other", "orders"), "orders-breaker") // no route: only its Host entry
	f.table.Expose(breaker.NewKey("shop", "billing"), "billing-breaker")

	cases := []struct {
		name, host, path string
		status           int
		body             string
	}{
		{name: "the cluster domain is the configured one", host: "billing-breaker.shop.svc.corp.example", path: "/a", status: 200, body: "hello from /a"},
		{name: "another domain is not cut", host: "billing-breaker.shop.svc.cluster.local", path: "/shop/billing/a", status: 200, body: "hello from /a"},
		{name: "a bare name two namespaces share is not guessed", host: "orders-breaker", path: "/shop/orders/a", status: 404,
			body: `several circuit breakers are exposed as "orders-breaker": call one as <service>.<namespace>, ` +
				`<service>.<namespace>.svc or <service>.<namespace>.svc.corp.example`},
		{name: "a qualified name of a shared bare one routes", host: "orders-breaker.shop", path: "/a", status: 200, body: "hello from /a"},
		{name: "an exposed name without a route is not found", host: "orders-breaker.other.svc", path: "/a", status: 404,
			body: "circuit breaker 'other/orders' not found"},
		{name: "an unknown Host falls back to the path", host: "proxy.circuit-breaker-system.svc", path: "/shop/billing/b", status: 200, body: "hello from /b"},
		{name: "an IP address falls back to the path", host: "127.0.0.1:8080", path: "/shop/billing/c", status: 200, body: "hello from /c"},
		{name: "an IPv6 address falls back to the path", host: "[::1]:8080", path: "/shop/billing/d", status: 200, body: "hello from /d"},
		{name: "an unknown Host and no route by path", host: "nothing.here", path: "/x", status: 404,
			body: "no circuit breaker here: use /<namespace>/<name>/<path>, or an exposed Service's name as the Host"},
		{name: "a Host-routed path may not climb", host: "billing-breaker.shop", path: "/a/%2e%2e/admin", status: 400,
			body: "circuit breaker 'shop/billing': a path may not have . or .. segments"},
		{name: "a name with more labels is not a Service", host: "billing-breaker.shop.svc.corp.example.evil", path: "/shop/billing/e", status: 200,
			body: "hello from /e"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			resp, body := f.getHost(t, tc.host, tc.path)
			g.Expect(resp.StatusCode).To(Equal(tc.status), body)
			if tc.status == 200 {
				g.Expect(body).To(Equal(tc.body))
			} else {
				g.Expect(jsonError(g, body)).To(Equal(tc.body))
			}
		})
	}

	t.Run("the bare name routes again once one breaker has it", func(t *testing.T) {
		g := NewWithT(t)
		f.table.Expose(breaker.NewKey("other", "orders"), "")
		resp, body := f.getHost(t, "orders-breaker", "/z")
		g.Expect(resp.StatusCode).To(Equal(200), body)
		g.Expect(body).To(Equal("hello from /z"))
	})
	t.Run("a renamed exposure frees the old name", func(t *testing.T) {
		g := NewWithT(t)
		f.table.Expose(breaker.NewKey("shop", "billing"), "payments")
		resp, body := f.getHost(t, "billing-breaker.shop", "/y")
		g.Expect(resp.StatusCode).To(Equal(404), body)
		resp, body = f.getHost(t, "payments.shop", "/y")
		g.Expect(resp.StatusCode).To(Equal(200), body)
	})
	t.Run("a deleted breaker's Host routes nowhere", func(t *testing.T) {
		g := NewWithT(t)
		f.table.Delete(breaker.NewKey("shop", "billing"))
		resp, body := f.getHost(t, "payments.shop", "/shop/orders/q")
		g.Expect(resp.StatusCode).To(Equal(200), "falls back to the path route: %s", body)
		g.Expect(body).To(Equal("hello from /q"))
		_, m := f.table.hosts.lookup("payments", ".svc.corp.example")
		g.Expect(m).To(Equal(hostNone))
	})
}

func TestServiceHost(t *testing.T) {
	const suffix = ".svc.cluster.local"
	for host, want := range map[string]string{
		"a.b":                      "a.b",
		"a.b.svc":                  "a.b",
		"a.b.svc.cluster.local":    "a.b",
		"a.b.svc.cluster.local.:1": "a.b",
		"A.B:443":                  "a.b",
		"a":                        "a",
		"a.b.c":                    "",
		"10.0.0.1":                 "",
		"[fd00::1]:80":             "",
		"fd00::1":                  "",
		"":                         "",
		"a.svc":                    "a.svc",
		"a.svc.cluster.local":      "",
		"a.b.svc.other.domain":     "",
	} {
		NewWithT(t).Expect(serviceHost(host, suffix)).To(Equal(want), host)
	}
}
