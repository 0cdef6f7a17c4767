package proxy

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// reject answers a call the breaker refused, without contacting the upstream.
func (p *Proxy) reject(w http.ResponseWriter, rt *route, err error) {
	rt.metrics().Rejected.Inc()
	state, retryAfter := "half-open", 1
	switch {
	case errors.Is(err, breaker.ErrForcedOpen):
		state, retryAfter = "open", 0 // no time to give: it opens when someone changes the mode
	case errors.Is(err, breaker.ErrOpen):
		state = "open"
		retryAfter = max(1, int(breaker.WholeSecondsUntil(rt.breaker.OpenUntil(), p.clock.Now())))
	}
	h := w.Header()
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	h.Set(StateHeader, state)
	if fb := rt.Fallback; fb != nil {
		if fb.StatusCode == http.StatusNoContent || fb.StatusCode == http.StatusNotModified {
			w.WriteHeader(fb.StatusCode) // these answers carry no body
			return
		}
		if fb.ContentType != "" {
			h.Set("Content-Type", fb.ContentType)
		}
		h.Set("Content-Length", strconv.Itoa(len(fb.Body)))
		w.WriteHeader(fb.StatusCode)
		_, _ = w.Write(fb.Body)
		return
	}
	writeError(w, http.StatusServiceUnavailable, "circuit breaker '"+string(rt.key)+"' is "+state+": "+err.Error())
}
