// Package metrics holds the contract's Prometheus series of every breaker:
// state, transitions, rates, and the proxy's request counts and durations.
package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// Breakers are the contract's Prometheus series of all breakers.
type Breakers struct {
	state       *prometheus.GaugeVec
	requests    *prometheus.CounterVec
	transitions *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	// failureRate and slowCallRate exist only for breakers with a rate window.
	failureRate, slowCallRate *prometheus.GaugeVec
	// endpoints and ejections exist only for Service upstreams.
	endpoints *endpointsCollector
	ejections *prometheus.CounterVec
}

// Labels of every breaker's series.
const (
	labelNamespace = "namespace"
	labelName      = "name"
)

var allStates = []breaker.State{breaker.StateClosed, breaker.StateOpen, breaker.StateHalfOpen}

// NewBreakers creates the series and registers them on reg (in the manager,
// controller-runtime's registry, served on --metrics-bind-address).
func NewBreakers(reg prometheus.Registerer) *Breakers {
	m := &Breakers{
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
			// breaker: the histogram is 14 of a busy breaker's 20 series, about
			// 1.4 KiB of its heap and most of a scrape's cost (docs/benchmarks.md,
			// busy). Kept because the Grafana dashboard's p50/p90/p99 need buckets
			// at most 2.5x apart over that range; a summary could not be
			// aggregated across replicas, and the per-minute p99 of the
			// REST timeline is this replica's only.
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
		endpoints: &endpointsCollector{desc: prometheus.NewDesc("circuitbreaker_endpoints",
			"A Service upstream's endpoints: ready (the ones the proxy may use), and of those ejected now.",
			[]string{labelNamespace, labelName, "state"}, nil)},
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circuitbreaker_endpoint_ejections_total",
			Help: "Ejections of a Service upstream's endpoints from the balancing.",
		}, []string{labelNamespace, labelName}),
	}
	reg.MustRegister(m.state, m.requests, m.transitions, m.duration, m.failureRate, m.slowCallRate, m.endpoints, m.ejections)
	return m
}

// EndpointCounts yields every Service upstream's endpoint counts as they
// are now, until yield returns false.
type EndpointCounts func(yield func(key breaker.Key, ready, ejected int) bool)

// CollectEndpoints makes circuitbreaker_endpoints read source at each
// scrape. The counts live in the proxy's routes already; stored series
// would hold a copy of them, two per Service upstream at about 450 bytes
// each, for the life of every breaker.
func (m *Breakers) CollectEndpoints(source EndpointCounts) { m.endpoints.source.Store(&source) }

// endpointsCollector is circuitbreaker_endpoints, read from its source at
// each scrape.
type endpointsCollector struct {
	desc   *prometheus.Desc
	source atomic.Pointer[EndpointCounts]
}

func (c *endpointsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *endpointsCollector) Collect(ch chan<- prometheus.Metric) {
	source := c.source.Load()
	if source == nil {
		return
	}
	(*source)(func(key breaker.Key, ready, ejected int) bool {
		namespace, name := key.Split()
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(ready), namespace, name, "ready")
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(ejected), namespace, name, "ejected")
		return true
	})
}

// EndpointEjected counts an ejection of one of key's endpoints.
func (m *Breakers) EndpointEjected(key breaker.Key) {
	namespace, name := key.Split()
	m.ejections.WithLabelValues(namespace, name).Inc()
}

// Route is one breaker's request series, resolved once so that a request
// does no label lookups.
type Route struct {
	Success, Failure, Rejected prometheus.Counter
	Duration                   prometheus.Observer
}

// Route resolves the request series of the breaker key.
func (m *Breakers) Route(key breaker.Key) Route {
	namespace, name := key.Split()
	return Route{
		Success:  m.requests.WithLabelValues(namespace, name, "success"),
		Failure:  m.requests.WithLabelValues(namespace, name, "failure"),
		Rejected: m.requests.WithLabelValues(namespace, name, "rejected"),
		Duration: m.duration.WithLabelValues(namespace, name),
	}
}

// SetState sets the state series of a breaker.
func (m *Breakers) SetState(key breaker.Key, state breaker.State) {
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
func (m *Breakers) RecordTransition(key breaker.Key, t breaker.Transition) {
	if t.From != t.To {
		namespace, name := key.Split()
		m.transitions.WithLabelValues(namespace, name, t.From.String(), t.To.String()).Inc()
	}
	m.SetState(key, t.To)
}

// RecordRates sets the rate gauges of a breaker with a rate window. The
// registry reports count changes at most once a second (CountsFlushInterval),
// no more often than a window's bucket of at least 100 ms turns over.
func (m *Breakers) RecordRates(key breaker.Key, s breaker.Snapshot) {
	if !s.Settings.Windowed() {
		return
	}
	namespace, name := key.Split()
	m.failureRate.WithLabelValues(namespace, name).Set(s.FailureRate())
	m.slowCallRate.WithLabelValues(namespace, name).Set(s.SlowCallRate())
}

// Forget drops every series of a deleted breaker.
func (m *Breakers) Forget(key breaker.Key) {
	namespace, name := key.Split()
	labels := prometheus.Labels{labelNamespace: namespace, labelName: name}
	m.state.DeletePartialMatch(labels)
	m.requests.DeletePartialMatch(labels)
	m.transitions.DeletePartialMatch(labels)
	m.duration.DeletePartialMatch(labels)
	m.failureRate.DeletePartialMatch(labels)
	m.slowCallRate.DeletePartialMatch(labels)
	m.ejections.DeletePartialMatch(labels)
}
