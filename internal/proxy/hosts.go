package proxy

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/readmostly"
)

// hostIndex routes by Host: the Services breakers are exposed as
// (spec.expose) to their breakers. Reads take no lock and allocate
// nothing (a Host with capital letters costs one lower-casing); the
// controller writes it as Services come and go.
type hostIndex struct {
	// qualified maps "<service>.<namespace>" to its breaker.
	qualified readmostly.Map[string, breaker.Key]
	// bare maps "<service>" to its breaker while exactly one exposed
	// breaker has that name, and to "" while several have: a bare name
	// says nothing of the namespace, which is not guessed.
	bare readmostly.Map[string, breaker.Key]

	// exposed counts the exposed breakers: with none, no Host is read.
	exposed atomic.Int64

	mu sync.Mutex // serialises writers; under it:
	// byKey is each exposed breaker's "<service>.<namespace>"; sharing is
	// who has each bare name.
	byKey   map[breaker.Key]string
	sharing map[string]map[breaker.Key]struct{}
}

// expose routes Host "<service>.<namespace>[.svc[.<cluster-domain>]]", and
// the bare "<service>" while it is unique, to key; service "" removes
// key's Host route.
func (h *hostIndex) expose(key breaker.Key, service string) {
	namespace, _ := key.Split()
	qualified := ""
	if service != "" {
		qualified = strings.ToLower(service) + "." + namespace
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byKey == nil {
		h.byKey, h.sharing = map[breaker.Key]string{}, map[string]map[breaker.Key]struct{}{}
	}
	old := h.byKey[key]
	if old == qualified {
		return
	}
	if old != "" {
		h.exposed.Add(-1)
		delete(h.byKey, key)
		h.qualified.Update(old, func(k breaker.Key, loaded bool) (breaker.Key, bool) {
			return k, loaded && k != key // another breaker's since: keep it
		})
		bare, _, _ := strings.Cut(old, ".")
		delete(h.sharing[bare], key)
		h.publishBare(bare)
	}
	if qualified != "" {
		h.exposed.Add(1)
		h.byKey[key] = qualified
		h.qualified.Update(qualified, func(breaker.Key, bool) (breaker.Key, bool) { return key, true })
		bare, _, _ := strings.Cut(qualified, ".")
		if h.sharing[bare] == nil {
			h.sharing[bare] = map[breaker.Key]struct{}{}
		}
		h.sharing[bare][key] = struct{}{}
		h.publishBare(bare)
	}
}

// publishBare stores what the bare name routes to now. Under mu.
func (h *hostIndex) publishBare(bare string) {
	keys := h.sharing[bare]
	h.bare.Update(bare, func(breaker.Key, bool) (breaker.Key, bool) {
		switch len(keys) {
		case 0:
			return "", false
		case 1:
			for k := range keys {
				return k, true
			}
		}
		return "", true // shared: not guessed
	})
	if len(keys) == 0 {
		delete(h.sharing, bare)
	}
}

// hostMatch is what a Host says of the route.
type hostMatch uint8

const (
	hostNone      hostMatch = iota // no exposed Service: route by path
	hostRouted                     // an exposed Service's breaker
	hostAmbiguous                  // a bare name several breakers are exposed as
)

// lookup finds the breaker host names. svcSuffix is ".svc." and the
// cluster domain (".svc.cluster.local").
func (h *hostIndex) lookup(host, svcSuffix string) (breaker.Key, hostMatch) {
	if h.exposed.Load() == 0 {
		return "", hostNone
	}
	name := serviceHost(host, svcSuffix)
	if name == "" {
		return "", hostNone
	}
	if strings.IndexByte(name, '.') >= 0 {
		if key, ok := h.qualified.Load(name); ok {
			return key, hostRouted
		}
		return "", hostNone
	}
	switch key, ok := h.bare.Load(name); {
	case !ok:
		return "", hostNone
	case key == "":
		return "", hostAmbiguous
	default:
		return key, hostRouted
	}
}

// serviceHost reduces a Host to "<service>.<namespace>" or "<service>":
// without its port and trailing dot, lower-cased, with ".svc" and
// ".svc.<cluster-domain>" cut. It returns "" for what cannot be a
// Service's name (an IP address, more labels).
func serviceHost(host, svcSuffix string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		if strings.IndexByte(host, ']') >= 0 || strings.IndexByte(host[:i], ':') >= 0 {
			return "" // an IPv6 address
		}
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			host = strings.ToLower(host)
			break
		}
	}
	// Cut only after "<service>.<namespace>": "a.svc" is Service a of
	// namespace svc, as cluster DNS reads it.
	for _, suffix := range [...]string{svcSuffix, ".svc"} {
		if cut, ok := strings.CutSuffix(host, suffix); ok && strings.IndexByte(cut, '.') >= 0 {
			host = cut
			break
		}
	}
	if dot := strings.IndexByte(host, '.'); dot >= 0 && strings.IndexByte(host[dot+1:], '.') >= 0 {
		return ""
	}
	return host
}
