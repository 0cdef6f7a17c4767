package restapi

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// fleet puts 3 namespaces of breakers in f's registry, every third open,
// and returns their keys, sorted.
func fleet(f *fixture, perNamespace int) (keys []string, open map[string]bool) {
	open = map[string]bool{}
	for _, ns := range []string{"billing", "shop", "zoo"} {
		for i := range perNamespace {
			key := breaker.NewKey(ns, fmt.Sprintf("svc-%02d", i))
			b, _ := f.registry.Upsert(key, "uid", breaker.Settings{FailureThreshold: 1, RecoveryTimeout: time.Minute}, nil)
			if i%3 == 0 {
				tk, _ := b.Allow()
				tk.Failure(breaker.Failure{StatusCode: 503})
				open[string(key)] = true
			}
			keys = append(keys, string(key))
		}
	}
	slices.Sort(keys)
	return keys, open
}

// walk follows the list's Link headers from path, and returns the keys of
// every page in order, the pages' sizes and the last page's headers.
func walk(t *testing.T, f *fixture, path string) (keys []string, sizes []int, last http.Header) {
	g := NewWithT(t)
	for range 100 { // bounded: a Link that loops fails the test
		resp, body := f.do(t, http.MethodGet, path)
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK), fmt.Sprint(body))
		page := body["circuit_breakers"].(map[string]any)
		var got []string
		for key := range page {
			got = append(got, key)
		}
		slices.Sort(got)
		keys, sizes, last = append(keys, got...), append(sizes, len(got)), resp.Header
		link := resp.Header.Get("Link")
		if link == "" {
			return keys, sizes, last
		}
		g.Expect(link).To(MatchRegexp(`^<(/api/circuit-breakers\?[^>]+)>; rel="next"$`))
		path = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
	}
	t.Fatalf("more than 100 pages from %s", path)
	return nil, nil, nil
}

func TestListPages(t *testing.T) {
	f := newFixture(t)
	all, open := fleet(f, 7) // 21 breakers, 9 open
	// The fixture's client holds shop/order-api's status: a page reads it.
	f.registry.Upsert(breaker.NewKey("shop", "order-api"), "uid", breaker.Settings{}, nil)
	all = append(all, "shop/order-api")
	slices.Sort(all)
	only := func(keep func(string) bool) []string {
		var keys []string
		for _, k := range all {
			if keep(k) {
				keys = append(keys, k)
			}
		}
		return keys
	}
	everyState := "closed=13,half-open=0,open=9"
	tests := []struct {
		name   string
		path   string
		keys   []string
		sizes  []int
		counts string
	}{
		{name: "no parameter: every breaker in one answer", path: "/api/circuit-breakers",
			keys: all, sizes: []int{22}, counts: everyState},
		{name: "pages of 5 cover every breaker once, in order", path: "/api/circuit-breakers?limit=5",
			keys: all, sizes: []int{5, 5, 5, 5, 2}, counts: everyState},
		{name: "a page as large as the fleet has no next", path: "/api/circuit-breakers?limit=22",
			keys: all, sizes: []int{22}, counts: everyState},
		{name: "open ones, by 4", path: "/api/circuit-breakers?limit=4&state=open",
			keys: only(func(k string) bool { return open[k] }), sizes: []int{4, 4, 1}, counts: everyState},
		{name: "open and half-open", path: "/api/circuit-breakers?state=half-open,open",
			keys: only(func(k string) bool { return open[k] }), sizes: []int{9}, counts: everyState},
		{name: "closed ones of one namespace", path: "/api/circuit-breakers?namespace=shop&state=closed&limit=3",
			keys:  only(func(k string) bool { return strings.HasPrefix(k, "shop/") && !open[k] }),
			sizes: []int{3, 2}, counts: "closed=5,half-open=0,open=3"},
		{name: "a part of the name, any case", path: "/api/circuit-breakers?q=SVC-0&limit=10",
			keys: only(func(k string) bool { return strings.Contains(k, "svc-0") }), sizes: []int{10, 10, 1}, counts: "closed=12,half-open=0,open=9"},
		{name: "a part that crosses the slash", path: "/api/circuit-breakers?q=p/order",
			keys: []string{"shop/order-api"}, sizes: []int{1}, counts: "closed=1,half-open=0,open=0"},
		{name: "a namespace with none", path: "/api/circuit-breakers?namespace=empty&limit=5",
			keys: nil, sizes: []int{0}, counts: "closed=0,half-open=0,open=0"},
		{name: "continue past the last key", path: "/api/circuit-breakers?limit=5&continue=zoo/zzz",
			keys: nil, sizes: []int{0}, counts: everyState},
		{name: "continue from a deleted key goes on after it", path: "/api/circuit-breakers?limit=50&continue=shop/svc-02x",
			keys: only(func(k string) bool { return k > "shop/svc-02x" }), sizes: []int{11}, counts: everyState},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			keys, sizes, last := walk(t, f, tt.path)
			g.Expect(keys).To(Equal(tt.keys))
			g.Expect(sizes).To(Equal(tt.sizes))
			g.Expect(last.Get("X-State-Counts")).To(Equal(tt.counts))
			total := len(tt.keys)
			if strings.Contains(tt.path, "continue=") {
				total = -1 // counted over every match, before the cursor
			}
			if total >= 0 {
				g.Expect(last.Get("X-Total-Count")).To(Equal(fmt.Sprint(total)))
			}
		})
	}

	t.Run("a page's entry is the whole entry, status included", func(t *testing.T) {
		g := NewWithT(t)
		_, whole := f.do(t, http.MethodGet, "/api/circuit-breakers")
		_, page := f.do(t, http.MethodGet, "/api/circuit-breakers?q=order-api&limit=1")
		entry := page["circuit_breakers"].(map[string]any)["shop/order-api"]
		g.Expect(entry).To(Equal(whole["circuit_breakers"].(map[string]any)["shop/order-api"]))
		g.Expect(entry.(map[string]any)["open_replicas"]).To(Equal("1/2"))
	})

	t.Run("HEAD: the headers without the body", func(t *testing.T) {
		g := NewWithT(t)
		resp, body := f.do(t, http.MethodHead, "/api/circuit-breakers?limit=5")
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
		g.Expect(body).To(BeNil())
		g.Expect(resp.Header.Get("X-Total-Count")).To(Equal("22"))
		g.Expect(resp.Header.Get("Link")).To(ContainSubstring("continue=billing%2Fsvc-04"))
	})
}

func TestListRefusesBadQueries(t *testing.T) {
	f := newFixture(t)
	all, _ := fleet(f, 2)
	tests := []struct {
		query string
		error string
	}{
		{"limit=0", `limit "0": give a whole number from 1 to 1000`},
		{"limit=1001", `limit "1001": give a whole number from 1 to 1000`},
		{"limit=-3", `limit "-3": give a whole number from 1 to 1000`},
		{"limit=ten", `limit "ten": give a whole number from 1 to 1000`},
		{"limit=5&limit=6", `parameter "limit" given 2 times: give it once`},
		{"state=broken", `unknown state "broken": use closed, half-open or open (comma-separated for several)`},
		{"state=open,", `unknown state "": use closed, half-open or open (comma-separated for several)`},
		{"namespace=Shop", `namespace "Shop" is not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{"continue=shop", `continue "shop": give the namespace/name the Link header's next page names`},
		{"continue=/x", `continue "/x": give the namespace/name the Link header's next page names`},
		{"page=2", `unknown parameter "page": use namespace, q, state, limit, continue`},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			g := NewWithT(t)
			resp, body := f.do(t, http.MethodGet, "/api/circuit-breakers?"+tt.query)
			g.Expect(resp.StatusCode).To(Equal(http.StatusBadRequest))
			g.Expect(body).To(Equal(map[string]any{"success": false, "error": tt.error}))
			g.Expect(resp.Header.Get("X-Total-Count")).To(BeEmpty())
		})
	}
	// Nothing changed: every breaker is there, none reset.
	keys, _, last := walk(t, f, "/api/circuit-breakers")
	NewWithT(t).Expect(keys).To(Equal(all))
	NewWithT(t).Expect(last.Get("X-State-Counts")).To(Equal("closed=3,half-open=0,open=3"))
}
