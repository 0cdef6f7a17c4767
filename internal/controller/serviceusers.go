package controller

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// serviceUsers maps each Service to the breakers whose upstream names it,
// so that a Service or EndpointSlice change reconciles them. The reconciles
// keep it: each records its breaker's Service before it reads that Service
// and its slices from the cache, so a change the read missed has its
// handler run after the record and finds the breaker. A cache field index
// would hold a one-key set per breaker, about 0.25 KiB (controller-runtime's
// IndexField two: it adds an all-namespaces key; indexOne does not); this
// is two small map entries.
type serviceUsers struct {
	mu        sync.RWMutex
	byService map[types.NamespacedName][]string // the breakers' names, in the Service's namespace
	ofBreaker map[breaker.Key]string            // the Service each breaker names
}

// set records that key's upstream is the Service named service in key's
// namespace ("" for none: a URL upstream, or a breaker deleted).
func (s *serviceUsers) set(key breaker.Key, service string) {
	s.mu.RLock()
	old, had := s.ofBreaker[key]
	s.mu.RUnlock()
	if old == service && (had || service == "") {
		return // the common case: unchanged, under the read lock only
	}
	namespace, name := key.Split()
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, had = s.ofBreaker[key]; had {
		svc := types.NamespacedName{Namespace: namespace, Name: old}
		names := s.byService[svc]
		for i, n := range names {
			if n == name {
				names = append(names[:i:i], names[i+1:]...)
				break
			}
		}
		if len(names) == 0 {
			delete(s.byService, svc)
		} else {
			s.byService[svc] = names
		}
		delete(s.ofBreaker, key)
	}
	if service == "" {
		return
	}
	if s.byService == nil {
		s.byService, s.ofBreaker = map[types.NamespacedName][]string{}, map[breaker.Key]string{}
	}
	svc := types.NamespacedName{Namespace: namespace, Name: service}
	s.byService[svc] = append(s.byService[svc], name)
	s.ofBreaker[key] = service
}

// breakers are the requests of the breakers whose upstream is the Service
// namespace/service.
func (s *serviceUsers) breakers(namespace, service string) []reconcile.Request {
	s.mu.RLock()
	defer s.mu.RUnlock()
	names := s.byService[types.NamespacedName{Namespace: namespace, Name: service}]
	requests := make([]reconcile.Request, 0, len(names))
	for _, name := range names {
		requests = append(requests, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: namespace, Name: name}})
	}
	return requests
}
