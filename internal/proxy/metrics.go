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
	// failureRate and slowCallRate exist only for breakers with a rate window.
	failureRate, slowCallRate *prometheus.GaugeVec
}

// Labels of every breaker's series.
const (
	labelNamespace = "namespace"
	labelName      = "name"
)

var allStates = []breaker.State{breaker.StateClosed, breaker.StateOpen, breaker.StateHalfOpen}

// NewMetrics creates the series and registers them on reg (in the manager,
// controller-runtime's registry, served on --metrics-bind-address).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "circuitbreaker_state",
			Help: "The breaker's state: 1 for the current state, 0 for the others.",
		}, []string{labelNamespace, labelName, "state"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circuitbreaker_requests_total",
			Help: "Requests through the proxy by outcome: success, failure or rejected.",
		}, []string{labelNamespace, labelName, "outcome"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circuitbreaker_transitions_total",
			Help: "State transitions of the breaker.",
		}, []string{labelNamespace, labelName, "from", "to"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "circuitbreaker_request_duration_seconds",
			Help: "Time to the upstream's response headers, for requests forwarded to the upstream.",
			// 5 ms to 10 s in 11 buckets: from a fast in-cluster answer to the
			// default requestTimeout, where a call becomes a timeout failure
			// (counted in requests_total). Each bucket is a series per
			// breaker, so no more of them than the question needs.
			Buckets: prometheus.DefBuckets,
		}, []string{labelNamespace, labelName}),
		failureRate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "circuitbreaker_failure_rate",
			Help: "Failures over the calls in the breaker's rate window, 0..1; updated at most once a second.",
		}, []string{labelNamespace, labelName}),
		slowCallRate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "circuitbreaker_slow_call_rate",
			Help: "Slow calls over the calls in the breaker's rate window, 0..1; updated at most once a second.",
		}, []string{labelNamespace, labelName}),
	}
	reg.MustRegister(m.state, m.requests, m.transitions, m.duration, m.failureRate, m.slowCallRate)
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

// RecordRates sets the rate gauges of a breaker with a rate window. The
// registry reports count changes at most once a second (CountsFlushInterval),
// no more often than a window's bucket of at least 100 ms turns over.
func (m *Metrics) RecordRates(key breaker.Key, s breaker.Snapshot) {
	if !s.Settings.Windowed() {
		return
	}
	namespace, name := key.Split()
	m.failureRate.WithLabelValues(namespace, name).Set(s.FailureRate())
	m.slowCallRate.WithLabelValues(namespace, name).Set(s.SlowCallRate())
}

// Forget drops every series of a deleted breaker.
func (m *Metrics) Forget(key breaker.Key) {
	namespace, name := key.Split()
	labels := prometheus.Labels{labelNamespace: namespace, labelName: name}
	m.state.DeletePartialMatch(labels)
	m.requests.DeletePartialMatch(labels)
	m.transitions.DeletePartialMatch(labels)
	m.duration.DeletePartialMatch(labels)
	m.failureRate.DeletePartialMatch(labels)
	m.slowCallRate.DeletePartialMatch(labels)
}
