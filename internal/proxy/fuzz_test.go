package proxy

import (
	"strings"
	"testing"
)

// FuzzSplitPath: any path either names a breaker as <namespace>/<name>
// taken from its first two segments, or is refused; it never panics.
func FuzzSplitPath(f *testing.F) {
	for _, seed := range []string{"/shop/order-api/a/b", "/shop/order-api", "/", "//", "/a//b", "/a/b/", "", "/%2F/x"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, path string) {
		key, rest, ok := splitPath(path)
		if !ok {
			return
		}
		namespace, name, found := strings.Cut(string(key), "/")
		if !found || namespace == "" || name == "" || strings.Contains(name, "/") {
			t.Fatalf("splitPath(%q) = key %q: want <namespace>/<name>", path, key)
		}
		if "/"+string(key)+rest != path {
			t.Fatalf("splitPath(%q) = %q + %q: does not rebuild the path", path, key, rest)
		}
		if rest != "" && rest[0] != '/' {
			t.Fatalf("splitPath(%q): rest %q does not start with /", path, rest)
		}
	})
}

// FuzzParseStatusCodes: a pattern is refused or yields codes 100..599 only.
func FuzzParseStatusCodes(f *testing.F) {
	for _, seed := range []string{"5xx", "429", "500-504", "504-500", "abc", "6xx", "", "1xx", "599-600"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, pattern string) {
		set, err := ParseStatusCodes([]string{pattern})
		if err != nil {
			return
		}
		for code := 0; code < 640; code++ {
			if set.Contains(code) && (code < 100 || code > 599) {
				t.Fatalf("%q contains %d", pattern, code)
			}
		}
	})
}
