// Package proxy is the data plane: it forwards /<namespace>/<name>/<path> to
// that breaker's upstream, asks the breaker first, classifies the outcome and
// serves the fallback while the circuit rejects calls. It knows nothing of
// the CircuitBreaker resource: the controller hands it complete RouteConfigs.
package proxy
