package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// Metrics are the contract's Prometheus series.
type Metrics struct {
	state       *prometheus.GaugeVec
	requests    *prometheus.CounterVec
	transitions *prometheus.CounterVec
	duration    *prometheus.HistogramVec
}

var allStates = []breaker.State{breaker.StateClosed, breaker.StateOpen, breaker.StateHalfOpen}

// NewMetrics creates the series and registers them on reg (in the manager,
// controller-runtime's registry, served on --metrics-bind-address).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "circuitbreaker_state",
			Help: "The breaker's state: 1 for the current state, 0 for the others.",
		}, []string{"namespace", "name", "state"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circuitbreaker_requests_total",
			Help: "Requests through the proxy by outcome: success, failure or rejected.",
		}, []string{"namespace", "name", "outcome"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circuitbreaker_transitions_total",
			Help: "State transitions of the breaker.",
		}, []string{"namespace", "name", "from", "to"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "circuitbreaker_request_duration_seconds",
			Help: "Time to the upstream's response headers, for requests forwarded to the upstream.",
			// 5 ms to 10 s in 11 buckets: from a fast in-cluster answer to the
			// default requestTimeout, where a call becomes a timeout failure
			// (counted in requests_total). Each bucket is a series per
			// breaker, so no more of them than the question needs.
			Buckets: prometheus.DefBuckets,
		}, []string{"namespace", "name"}),
	}
	reg.MustRegister(m.state, m.requests, m.transitions, m.duration)
	return m
}

// routeMetrics are one breaker's series, resolved once so that a request
// does no label lookups.
type routeMetrics struct {
	success, failure, rejected prometheus.Counter
	duration                   prometheus.Observer
}

func (m *Metrics) forRoute(key breaker.Key) routeMetrics {
	namespace, name := key.Split()
	return routeMetrics{
		success:  m.requests.WithLabelValues(namespace, name, "success"),
		failure:  m.requests.WithLabelValues(namespace, name, "failure"),
		rejected: m.requests.WithLabelValues(namespace, name, "rejected"),
		duration: m.duration.WithLabelValues(namespace, name),
	}
}

// SetState sets the state series of a breaker.
func (m *Metrics) SetState(key breaker.Key, state breaker.State) {
	namespace, name := key.Split()
	for _, s := range allStates {
		v := 0.0
		if s == state {
			v = 1
		}
		m.state.WithLabelValues(namespace, name, s.String()).Set(v)
	}
}

// RecordTransition counts a transition and sets the new state.
func (m *Metrics) RecordTransition(key breaker.Key, t breaker.Transition) {
	if t.From != t.To {
		namespace, name := key.Split()
		m.transitions.WithLabelValues(namespace, name, t.From.String(), t.To.String()).Inc()
	}
	m.SetState(key, t.To)
}

// Forget drops every series of a deleted breaker.
func (m *Metrics) Forget(key breaker.Key) {
	namespace, name := key.Split()
	labels := prometheus.Labels{"namespace": namespace, "name": name}
	m.state.DeletePartialMatch(labels)
	m.requests.DeletePartialMatch(labels)
	m.transitions.DeletePartialMatch(labels)
	m.duration.DeletePartialMatch(labels)
}
