package restapi

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// MaxPageSize is the largest page GET /api/circuit-breakers?limit= gives.
const MaxPageSize = 1000

// listQuery is what a GET /api/circuit-breakers asks for. With no
// parameter it is every breaker, as the contract has it; the dashboard
// asks for a page of those its filters match, so that a poll of 10,000
// breakers costs a page, not the fleet.
type listQuery struct {
	// namespace, when set, is the only namespace listed.
	namespace string
	// contains, when set, is a lower-case part of "namespace/name".
	contains string
	// states lists the wanted states; all when none is set.
	states [3]bool
	// limit is the page size; 0 lists every match.
	limit int
	// after is the last key of the page before (the continue parameter).
	after breaker.Key
}

// listParameters are the query parameters the list knows.
var listParameters = []string{"namespace", "q", "state", "limit", "continue"}

// parseListQuery reads the list's query; an error says what is wrong in
// words a caller can act on (400).
func parseListQuery(v url.Values) (listQuery, error) {
	var q listQuery
	for name, values := range v {
		if !slices.Contains(listParameters, name) {
			return q, fmt.Errorf("unknown parameter %q: use %s", name, strings.Join(listParameters, ", "))
		}
		if len(values) > 1 {
			return q, fmt.Errorf("parameter %q given %d times: give it once", name, len(values))
		}
	}
	if ns := v.Get("namespace"); ns != "" {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return q, fmt.Errorf("namespace %q is not a namespace name: %s", ns, errs[0])
		}
		q.namespace = ns
	}
	q.contains = strings.ToLower(strings.TrimSpace(v.Get("q")))
	if states := v.Get("state"); states != "" {
		for _, name := range strings.Split(states, ",") {
			st, ok := stateNamed(strings.TrimSpace(name))
			if !ok {
				return q, fmt.Errorf("unknown state %q: use closed, half-open or open (comma-separated for several)", name)
			}
			q.states[st] = true
		}
	}
	if limit := v.Get("limit"); limit != "" {
		n, err := strconv.Atoi(limit)
		if err != nil || n < 1 || n > MaxPageSize {
			return q, fmt.Errorf("limit %q: give a whole number from 1 to %d", limit, MaxPageSize)
		}
		q.limit = n
	}
	if after := v.Get("continue"); after != "" {
		namespace, name, ok := strings.Cut(after, "/")
		if !ok || namespace == "" || name == "" {
			return q, fmt.Errorf("continue %q: give the namespace/name the Link header's next page names", after)
		}
		q.after = breaker.NewKey(namespace, name)
	}
	return q, nil
}

// stateNamed is the state the API spells name.
func stateNamed(name string) (breaker.State, bool) {
	for _, st := range []breaker.State{breaker.StateClosed, breaker.StateHalfOpen, breaker.StateOpen} {
		if apiState(st) == name {
			return st, true
		}
	}
	return 0, false
}

func (q *listQuery) wantsState(st breaker.State) bool {
	return q.states == [3]bool{} || q.states[st]
}

// matches reports whether key passes the namespace and text filters.
func (q *listQuery) matches(key breaker.Key) bool {
	if q.namespace != "" {
		if namespace, _ := key.Split(); namespace != q.namespace {
			return false
		}
	}
	return q.contains == "" || strings.Contains(strings.ToLower(string(key)), q.contains)
}

// list answers the breakers the query asks for, sorted by key, with three
// headers besides the contract's JSON: X-Total-Count (every breaker the
// filters match), X-State-Counts (those that match the namespace and text
// filters, by state: the dashboard's summary) and, when a page is not the
// last, Link with rel="next". Without a limit, at 10,000 breakers it is a
// large answer: the statuses are read from the cache without the deep copy
// a plain List makes (they are only read), and the JSON is written entry
// by entry, so what one poll holds at a time is one entry, not the
// document. A page reads only its own statuses.
func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet) {
		return
	}
	q, err := parseListQuery(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// One pass over the sorted keys: counts, the total and the page, the
	// page filtered in place in the slice Keys made.
	keys := s.registry.Keys() // sorted, as encoding/json orders a map's keys
	page := keys[:0]
	var counts [3]int
	total, more := 0, false
	for _, key := range keys {
		if !q.matches(key) {
			continue
		}
		b, ok := s.registry.Get(key)
		if !ok {
			continue // deleted since Keys
		}
		st := b.State()
		counts[st]++
		if !q.wantsState(st) {
			continue
		}
		total++
		switch {
		case q.after != "" && key <= q.after:
		case q.limit == 0 || len(page) < q.limit:
			page = append(page, key)
		default:
			more = true
		}
	}

	statuses := s.statuses(r, &q, page)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Total-Count", strconv.Itoa(total))
	h.Set("X-State-Counts", fmt.Sprintf("closed=%d,half-open=%d,open=%d",
		counts[breaker.StateClosed], counts[breaker.StateHalfOpen], counts[breaker.StateOpen]))
	if more {
		next := r.URL.Query()
		next.Set("continue", string(page[len(page)-1]))
		h.Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next.Encode()))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	out := bufio.NewWriterSize(w, listBufferSize)
	// One Encoder writes every entry into the buffer (json.Marshal would
	// allocate each entry's bytes); its newline after each is whitespace.
	// A bufio.Writer's first error sticks: a caller gone stops the loop.
	enc := json.NewEncoder(out)
	if _, err := out.WriteString(`{"success":true,"circuit_breakers":{`); err != nil {
		return
	}
	sep := ""
	for _, key := range page {
		b, ok := s.registry.Get(key)
		if !ok {
			continue // deleted since
		}
		// A key is a namespace and a name, DNS names both: nothing in it
		// needs escaping.
		_, _ = out.WriteString(sep) // an error sticks: the last write returns it
		_ = out.WriteByte('"')
		_, _ = out.WriteString(string(key))
		if _, err := out.WriteString(`":`); err != nil {
			return
		}
		sep = ","
		if err := enc.Encode(s.entry(key, b, statuses[key])); err != nil {
			return
		}
	}
	if _, err := out.WriteString("}}\n"); err != nil {
		return
	}
	_ = out.Flush()
}

// statuses reads the statuses of the page's breakers from the cache: a
// page by a Get each (a deep copy of each, a page at most); every match by
// one List without deep copies. A status the cache has not got is absent
// (the entry shows the replica's own view only).
func (s *Server) statuses(r *http.Request, q *listQuery, page []breaker.Key) map[breaker.Key]*cbv1.CircuitBreakerStatus {
	statuses := make(map[breaker.Key]*cbv1.CircuitBreakerStatus, len(page))
	if q.limit > 0 {
		for _, key := range page {
			namespace, name := key.Split()
			var cb cbv1.CircuitBreaker
			if s.client.Get(r.Context(), client.ObjectKey{Namespace: namespace, Name: name}, &cb) == nil {
				statuses[key] = &cb.Status
			}
		}
		return statuses
	}
	var list cbv1.CircuitBreakerList
	opts := []client.ListOption{client.UnsafeDisableDeepCopy}
	if q.namespace != "" {
		opts = append(opts, client.InNamespace(q.namespace))
	}
	if s.client.List(r.Context(), &list, opts...) == nil {
		for i := range list.Items {
			statuses[breaker.NewKey(list.Items[i].Namespace, list.Items[i].Name)] = &list.Items[i].Status
		}
	}
	return statuses
}

// listBufferSize is how much of the list's JSON is held before it is
// written to the connection.
const listBufferSize = 32 << 10
