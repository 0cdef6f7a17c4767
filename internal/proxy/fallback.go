package proxy

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// reject answers a call the breaker refused, without contacting the upstream.
func (p *Proxy) reject(w http.ResponseWriter, grpc bool, rt *route, err error) {
	rt.metrics().Rejected.Inc()
	state, retryAfter, pushback := "half-open", 1, time.Second
	switch {
	case errors.Is(err, breaker.ErrForcedOpen):
		state, retryAfter, pushback = "open", 0, 0 // no time to give: it opens when someone changes the mode
	case errors.Is(err, breaker.ErrOpen):
		state = "open"
		until, now := rt.breaker.OpenUntil(), p.clock.Now()
		retryAfter = max(1, int(breaker.WholeSecondsUntil(until, now)))
		pushback = max(time.Millisecond, until.Sub(now))
	}
	h := w.Header()
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	h.Set(StateHeader, state)
	if grpc {
		// gRPC's own Retry-After, which its clients' retry policies honour;
		// a fallback is an HTTP body, which a gRPC caller cannot read.
		if pushback > 0 {
			h.Set("Grpc-Retry-Pushback-Ms", strconv.FormatInt(pushback.Milliseconds(), 10))
		}
		writeGRPC(w, grpcUnavailable, "circuit breaker '"+string(rt.key)+"' is "+state+": "+err.Error())
		return
	}
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
