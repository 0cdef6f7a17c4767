package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ResetAnnotation resets a breaker once for each new value it is given.
const ResetAnnotation = "circuitbreaker.io/reset"

// Condition types, following kstatus: Ready=True means the breaker serves as
// its spec says (whatever the circuit's state); Stalled=True means the spec
// cannot be served until it changes, with the same reason as Ready=False.
const (
	ConditionReady   = "Ready"
	ConditionStalled = "Stalled"
	// ConditionExposed is True while spec.expose's Service routes here,
	// False (reason ServiceConflict) when a Service of that name is not
	// the operator's. Absent without spec.expose.
	ConditionExposed = "Exposed"
)

// State values of CircuitBreakerStatus.State.
const (
	StateClosed   = "Closed"
	StateOpen     = "Open"
	StateHalfOpen = "HalfOpen"
)

// Modes of CircuitBreakerSpec.Mode.
const (
	ModeEnforce    = "Enforce"
	ModeObserve    = "Observe"
	ModeForcedOpen = "ForcedOpen"
	ModeDisabled   = "Disabled"
)

// CircuitBreakerSpec is the configuration of one upstream's breaker.
// +kubebuilder:validation:XValidation:rule="!has(self.failureThreshold) || self.failureThreshold != 0 || has(self.failureRate)",message="failureThreshold: 0 switches the consecutive rule off and is allowed only with failureRate",fieldPath=".failureThreshold"
// +kubebuilder:validation:XValidation:rule="!has(self.slowCall) || duration(self.slowCall.durationThreshold) < (has(self.requestTimeout) ? duration(self.requestTimeout) : duration('10s'))",message="slowCall.durationThreshold must be less than requestTimeout",fieldPath=".slowCall.durationThreshold"
// +kubebuilder:validation:XValidation:rule="!has(self.openDuration) || !has(self.openDuration.max) || duration(self.openDuration.max) >= (has(self.recoveryTimeout) ? duration(self.recoveryTimeout) : duration('30s'))",message="openDuration.max must be at least recoveryTimeout",fieldPath=".openDuration.max"
type CircuitBreakerSpec struct {
	// Upstream is where the proxy forwards calls.
	Upstream Upstream `json:"upstream"`

	// FailureRate opens the circuit when failures reach a percentage of the
	// calls in a time window, OR-ed with failureThreshold.
	// +optional
	FailureRate *FailureRate `json:"failureRate,omitempty"`

	// SlowCall opens the circuit when calls slower than a duration reach a
	// percentage of the calls in the failureRate window (30s and 20 calls
	// without failureRate).
	// +optional
	SlowCall *SlowCall `json:"slowCall,omitempty"`

	// OpenDuration lengthens each consecutive opening, and may honour the
	// upstream's Retry-After. Without it every opening lasts recoveryTimeout.
	// +optional
	OpenDuration *OpenDuration `json:"openDuration,omitempty"`

	// Mode is how the breaker acts on calls: Enforce rejects while open;
	// Observe never rejects and shows what it would do; ForcedOpen rejects
	// every call; Disabled passes every call and counts nothing.
	// +kubebuilder:validation:Enum=Enforce;Observe;ForcedOpen;Disabled
	// +kubebuilder:default=Enforce
	// +optional
	Mode string `json:"mode,omitempty"`

	// FailureThreshold is the number of consecutive failures that open the
	// circuit; 0 switches this rule off, and is allowed only with failureRate.
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10000
	// +optional
	FailureThreshold int32 `json:"failureThreshold,omitempty"`

	// RecoveryTimeout is the time spent Open before half-open probes are admitted (at least 1s).
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="recoveryTimeout must be at least 1s"
	// +optional
	RecoveryTimeout *metav1.Duration `json:"recoveryTimeout,omitempty"`

	// HalfOpenMaxRequests is how many probes are admitted at once while HalfOpen.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	HalfOpenMaxRequests int32 `json:"halfOpenMaxRequests,omitempty"`

	// SuccessThreshold is the number of successful probes in a row that close the circuit.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	SuccessThreshold int32 `json:"successThreshold,omitempty"`

	// RequestTimeout bounds each proxied request until the upstream's
	// response headers (at most 5m); a timeout is a failure. A streaming
	// body or an upgraded connection then lives on under StreamIdleTimeout.
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="requestTimeout must be greater than 0"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('5m')",message="requestTimeout must be at most 5m"
	// +optional
	RequestTimeout *metav1.Duration `json:"requestTimeout,omitempty"`

	// StreamIdleTimeout ends a streaming response or an upgraded connection
	// (WebSocket) after no byte went either way for this long, with no
	// verdict: the call already succeeded when its headers arrived.
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('24h')",message="streamIdleTimeout must be from 1s to 24h"
	// +optional
	StreamIdleTimeout *metav1.Duration `json:"streamIdleTimeout,omitempty"`

	// MaxConcurrentRequests is how many calls may be in flight through this
	// breaker at once; beyond it callers get 503 with
	// X-Circuit-Breaker-State: saturated, and no verdict.
	// +kubebuilder:default=1024
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +optional
	MaxConcurrentRequests int32 `json:"maxConcurrentRequests,omitempty"`

	// FailureStatusCodes are the upstream responses that count as failures:
	// "NNN", "NNN-NNN" or "Nxx".
	// +kubebuilder:default={"5xx"}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=7
	// +kubebuilder:validation:items:Pattern=`^([1-5][0-9][0-9](-[1-5][0-9][0-9])?|[1-5]xx)$`
	// +kubebuilder:validation:XValidation:rule="self.all(c, !c.contains('-') || int(c.split('-')[0]) <= int(c.split('-')[1]))",message="a status code range must run from low to high, e.g. 500-504"
	// +optional
	FailureStatusCodes []string `json:"failureStatusCodes,omitempty"`

	// Fallback is what callers get while the circuit rejects them; without
	// it they get 503 with a JSON error.
	// +optional
	Fallback *Fallback `json:"fallback,omitempty"`

	// EndpointEjection takes a Service upstream's failing endpoints out of
	// its balancing for a while, below the breaker (which still counts
	// every call). Off when absent.
	// +optional
	EndpointEjection *EndpointEjection `json:"endpointEjection,omitempty"`

	// Expose has the operator keep a Service in this namespace through
	// which callers reach this breaker by name: an ExternalName Service
	// pointing at the proxy, owned by this CircuitBreaker. Callers change
	// their hostname to it, nothing else. Off when absent.
	// +optional
	Expose *Expose `json:"expose,omitempty"`
}

// Expose names the Service through which callers reach a breaker.
type Expose struct {
	// ServiceName is the Service's name (default <metadata.name>-breaker).
	// A Service of that name the operator does not own is never changed.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	// +optional
	ServiceName string `json:"serviceName,omitempty"`
}

// EndpointEjection is per-endpoint outlier ejection.
// +kubebuilder:validation:XValidation:rule="duration(has(self.maxEjectionTime) ? self.maxEjectionTime : '5m') >= duration(has(self.baseEjectionTime) ? self.baseEjectionTime : '30s')",message="maxEjectionTime must be at least baseEjectionTime",fieldPath=".maxEjectionTime"
type EndpointEjection struct {
	// ConsecutiveFailures in a row of one endpoint (connection errors,
	// timeouts, failureStatusCodes) eject it.
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// BaseEjectionTime is how long the first ejection in a row lasts; the
	// n-th lasts n times as long.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="baseEjectionTime must be between 1s and 1h"
	// +optional
	BaseEjectionTime *metav1.Duration `json:"baseEjectionTime,omitempty"`

	// MaxEjectionTime caps an ejection.
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('24h')",message="maxEjectionTime must be between 1s and 24h"
	// +optional
	MaxEjectionTime *metav1.Duration `json:"maxEjectionTime,omitempty"`

	// MaxEjectionPercent of the usable endpoints may be ejected at once
	// ((ejected+1)/endpoints at most this); one endpoint of two or more may
	// always be.
	// +kubebuilder:default=50
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	MaxEjectionPercent int32 `json:"maxEjectionPercent,omitempty"`
}

// Upstream is exactly one of a Service in the breaker's namespace or a URL.
// +kubebuilder:validation:XValidation:rule="has(self.service) != has(self.url)",message="exactly one of upstream.service or upstream.url must be set"
// +kubebuilder:validation:XValidation:rule="!has(self.protocol) || self.protocol != 'h2c' || (has(self.service) ? (!has(self.service.scheme) || self.service.scheme == 'http') : (isURL(self.url) && url(self.url).getScheme() == 'http'))",message="protocol h2c is HTTP/2 without TLS: it needs an http upstream (an https one negotiates HTTP/2 by ALPN)",fieldPath=".protocol"
// +kubebuilder:validation:XValidation:rule="!has(self.tls) || (has(self.service) ? (has(self.service.scheme) && self.service.scheme == 'https') : (isURL(self.url) && url(self.url).getScheme() == 'https'))",message="upstream.tls needs an https upstream",fieldPath=".tls"
type Upstream struct {
	// Service is a Service in the same namespace, reached as
	// <scheme>://<name>.<namespace>.svc:<port>.
	// +optional
	Service *ServiceUpstream `json:"service,omitempty"`

	// URL is any http(s) URL. The manager refuses it unless it runs with
	// --allow-url-upstreams.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && (url(self).getScheme() == 'http' || url(self).getScheme() == 'https') && url(self).getHostname() != ''",message="upstream.url must be an absolute http or https URL"
	// +optional
	URL string `json:"url,omitempty"`

	// Protocol is what the proxy speaks to an http upstream: http
	// (HTTP/1.1) or h2c (HTTP/2 with prior knowledge, without TLS, as gRPC
	// servers speak). A Service port whose appProtocol is kubernetes.io/h2c
	// or grpc is spoken to in h2c whatever this says. An https upstream
	// negotiates HTTP/2 or HTTP/1.1 by ALPN.
	// +kubebuilder:validation:Enum=http;h2c
	// +kubebuilder:default=http
	// +optional
	Protocol string `json:"protocol,omitempty"`

	// TLS is whom an https upstream is trusted as.
	// +optional
	TLS *UpstreamTLS `json:"tls,omitempty"`
}

// Protocols of Upstream.Protocol.
const (
	ProtocolHTTP = "http"
	ProtocolH2C  = "h2c"
)

// UpstreamTLS is how an https upstream's certificate is verified.
type UpstreamTLS struct {
	// CAConfigMap names the PEM bundle of the certificate authorities to
	// trust: a key of a ConfigMap in the breaker's namespace, as
	// trust-manager writes them. Without it the manager's system roots are
	// trusted, which a cluster CA is not in.
	// +optional
	CAConfigMap *ConfigMapKey `json:"caConfigMap,omitempty"`

	// ServerName is the name the upstream's certificate must be valid for:
	// by default <service>.<namespace>.svc for a Service upstream (which
	// is dialled at its endpoints' addresses), the URL's host for a URL one.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +optional
	ServerName string `json:"serverName,omitempty"`
}

// ConfigMapKey is one key of a ConfigMap in the breaker's namespace.
type ConfigMapKey struct {
	// Name of the ConfigMap.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// Key of the PEM bundle in the ConfigMap's data: ca.crt by default, the
	// key of the cluster's own kube-root-ca.crt ConfigMap and of
	// cert-manager's CA certificates.
	// +kubebuilder:default=ca.crt
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	// +optional
	Key string `json:"key,omitempty"`
}

// ServiceUpstream names a Service port.
type ServiceUpstream struct {
	// Name of the Service.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// Port of the Service: its number, or its name. The proxy dials the
	// Service's endpoints (from its EndpointSlices) at the port of the same
	// name in each slice, never the Service's cluster IP.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? (self >= 1 && self <= 65535) : (size(self) >= 1 && size(self) <= 63 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",message="upstream.service.port must be a port number (1..65535) or a port name"
	Port intstr.IntOrString `json:"port"`

	// Scheme is http or https. An https Service upstream's certificate is
	// verified against upstream.tls (its CA bundle and server name).
	// +kubebuilder:default=http
	// +kubebuilder:validation:Enum=http;https
	// +optional
	Scheme string `json:"scheme,omitempty"`
}

// Fallback is the response served while the circuit rejects calls.
type Fallback struct {
	// StatusCode of the fallback response.
	// +kubebuilder:default=503
	// +kubebuilder:validation:Minimum=200
	// +kubebuilder:validation:Maximum=599
	// +optional
	StatusCode int32 `json:"statusCode,omitempty"`

	// ContentType of the fallback body: a media type such as
	// "application/json" or "text/plain; charset=utf-8".
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=([A-Za-z0-9!#$&^_.+-]+|"[^"\\]*"))*$`
	// +optional
	ContentType string `json:"contentType,omitempty"`

	// Body of the fallback response (at most 8 KiB; not sent with 204 or 304).
	// +kubebuilder:validation:MaxLength=8192
	// +optional
	Body string `json:"body,omitempty"`
}

// FailureRate is the failure-rate rule.
type FailureRate struct {
	// Threshold opens the circuit when failures are at least this percentage of the window's calls.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	Threshold int32 `json:"threshold"`
	// MinimumRequests is how many calls the window must hold before the rate is judged.
	// +kubebuilder:default=20
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	// +optional
	MinimumRequests int32 `json:"minimumRequests,omitempty"`
	// Window is the time looked back over (1s to 10m), kept in 10 buckets.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('10m')",message="window must be from 1s to 10m"
	// +optional
	Window *metav1.Duration `json:"window,omitempty"`
}

// SlowCall is the slow-call-rate rule.
type SlowCall struct {
	// DurationThreshold makes a call slower than it slow, and a call whose
	// caller left after waiting longer; less than requestTimeout.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="durationThreshold must be greater than 0"
	DurationThreshold metav1.Duration `json:"durationThreshold"`
	// RateThreshold opens the circuit when slow calls are at least this percentage of the window's calls.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	RateThreshold int32 `json:"rateThreshold"`
}

// OpenDuration is how long each opening lasts.
type OpenDuration struct {
	// Multiplier lengthens the n-th consecutive opening to
	// recoveryTimeout × multiplier^(n−1), at most max.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	// +optional
	Multiplier int32 `json:"multiplier,omitempty"`
	// Max bounds an opening (at least recoveryTimeout; default 10m).
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +optional
	Max *metav1.Duration `json:"max,omitempty"`
	// Jitter adds up to this percentage at random, so replicas and breakers do not probe in lockstep.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	Jitter int32 `json:"jitter,omitempty"`
	// HonorRetryAfter keeps the circuit open as long as the 429 or 503
	// answer that opened it asked in Retry-After, within [recoveryTimeout, max].
	// +optional
	HonorRetryAfter bool `json:"honorRetryAfter,omitempty"`
}

// CircuitBreakerStatus is the live state of the breaker, written by the manager.
type CircuitBreakerStatus struct {
	// State is Closed, Open or HalfOpen.
	// +kubebuilder:validation:Enum=Closed;Open;HalfOpen
	// +optional
	State string `json:"state,omitempty"`

	// FailureCount is the number of consecutive failures in the current Closed
	// period; while Open or HalfOpen, the failures that opened the circuit.
	// +kubebuilder:default=0
	// +optional
	FailureCount int32 `json:"failureCount"`

	// LastFailureTime is when the last failure was seen.
	// +optional
	LastFailureTime *metav1.Time `json:"lastFailureTime,omitempty"`

	// LastTransitionTime is when the state last changed.
	// +optional
	LastTransitionTime *metav1.Time `json:"lastTransitionTime,omitempty"`

	// OpenUntil is, while Open, when half-open probes start.
	// +optional
	OpenUntil *metav1.Time `json:"openUntil,omitempty"`

	// LastOpenReason is the rule that last opened the circuit.
	// +kubebuilder:validation:Enum=ConsecutiveFailures;FailureRate;SlowCallRate;UpstreamRetryAfter;ProbeFailed;Forced;NoReadyEndpoints
	// +optional
	LastOpenReason string `json:"lastOpenReason,omitempty"`

	// ConsecutiveOpens counts the openings since the circuit last closed.
	// +optional
	ConsecutiveOpens int32 `json:"consecutiveOpens,omitempty"`

	// LastHandledReset is the last value of the reset annotation acted on.
	// +optional
	LastHandledReset string `json:"lastHandledReset,omitempty"`

	// Upstream is the address calls are forwarded to.
	// +optional
	Upstream string `json:"upstream,omitempty"`

	// History holds the last 10 transitions, oldest first.
	// +kubebuilder:validation:MaxItems=10
	// +listType=atomic
	// +optional
	History []TransitionRecord `json:"history,omitempty"`

	// ObservedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Replicas holds each manager replica's own view of the breaker. Each
	// replica writes its own entry (server-side apply, one field manager per
	// replica) when its view changes; entries of replicas that are gone
	// expire. A replica that never saw a call or a transition has no entry.
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Replicas []ReplicaStatus `json:"replicas,omitempty"`

	// OpenReplicas is "<open>/<replicas>": how many of the replicas with an
	// entry in replicas have the circuit open. Written by the leader.
	// +kubebuilder:validation:MaxLength=16
	// +optional
	OpenReplicas string `json:"openReplicas,omitempty"`

	// Endpoints is a Service upstream's endpoints as the leader's proxy
	// sees them.
	// +optional
	Endpoints *EndpointsStatus `json:"endpoints,omitempty"`

	// ExposedAs is the exposed Service's DNS name, set while that Service
	// exists and routes here (spec.expose).
	// +optional
	ExposedAs string `json:"exposedAs,omitempty"`

	// Conditions hold Ready (True: serving as specified; False with a
	// PascalCase reason and a message) and Stalled (True, with the same
	// reason, while the spec cannot be served).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// EndpointsStatus counts a Service upstream's endpoints.
type EndpointsStatus struct {
	// Ready is how many endpoints the proxy may use: the ready ones, else
	// (none ready) the serving and terminating ones.
	Ready int32 `json:"ready"`
	// Ejected is how many of those are ejected now.
	Ejected int32 `json:"ejected"`
	// Summary is "<usable>/<ready>", for kubectl's ENDPOINTS column.
	// +kubebuilder:validation:MaxLength=24
	// +optional
	Summary string `json:"summary,omitempty"`
	// EjectedEndpoints are the endpoints ejected now.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	EjectedEndpoints []EjectedEndpoint `json:"ejectedEndpoints,omitempty"`
}

// EjectedEndpoint is one endpoint out of the balancing until a time.
type EjectedEndpoint struct {
	// Address is the endpoint's IP.
	// +kubebuilder:validation:MaxLength=64
	Address string `json:"address"`
	// Pod is the slice's targetRef name, if it names a Pod.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Pod string `json:"pod,omitempty"`
	// Until is when it may be called again.
	Until metav1.Time `json:"until"`
}

// ReplicaStatus is one replica's view of the breaker.
type ReplicaStatus struct {
	// Name of the replica (its pod).
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// State is Closed, Open or HalfOpen, as this replica sees it.
	// +kubebuilder:validation:Enum=Closed;Open;HalfOpen
	State string `json:"state"`
	// FailureCount is this replica's own count: thresholds are counted per replica.
	FailureCount int32 `json:"failureCount"`
	// LastTransitionTime is when this replica's state last changed; the
	// newest transition of any live replica is the one every replica follows.
	// +optional
	LastTransitionTime *metav1.MicroTime `json:"lastTransitionTime,omitempty"`
	// OpenUntil is, while Open, when this replica starts probing.
	// +optional
	OpenUntil *metav1.MicroTime `json:"openUntil,omitempty"`
	// Reason of the last transition.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Reason string `json:"reason,omitempty"`
	// LastOpenReason is the rule that last opened this replica's circuit.
	// +kubebuilder:validation:MaxLength=32
	// +optional
	LastOpenReason string `json:"lastOpenReason,omitempty"`
	// LastUpdate is when this replica last wrote its entry.
	LastUpdate metav1.MicroTime `json:"lastUpdate"`
}

// TransitionRecord is one change of the breaker's state.
type TransitionRecord struct {
	// Time of the transition.
	Time metav1.MicroTime `json:"time"`
	// From is the state before.
	// +kubebuilder:validation:Enum=Closed;Open;HalfOpen
	From string `json:"from"`
	// To is the state after.
	// +kubebuilder:validation:Enum=Closed;Open;HalfOpen
	To string `json:"to"`
	// Reason says why, with counts, e.g. "5 consecutive failures, last: 503".
	// +kubebuilder:validation:MaxLength=1024
	Reason string `json:"reason"`
	// OpenReason is, for a transition to Open, the rule that opened it.
	// +kubebuilder:validation:MaxLength=32
	// +optional
	OpenReason string `json:"openReason,omitempty"`
}

// CircuitBreaker is a circuit breaker in front of one upstream.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=cb
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Failures",type=integer,JSONPath=`.status.failureCount`
// +kubebuilder:printcolumn:name="Threshold",type=integer,JSONPath=`.spec.failureThreshold`
// +kubebuilder:printcolumn:name="Timeout",type=string,JSONPath=`.spec.recoveryTimeout`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Replicas",type=string,JSONPath=`.status.openReplicas`,description="replicas that have the circuit open, of the replicas with a view"
// +kubebuilder:printcolumn:name="Endpoints",type=string,JSONPath=`.status.endpoints.summary`,description="usable endpoints of the ready ones (Service upstreams)"
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Upstream",type=string,JSONPath=`.status.upstream`,priority=1
// +kubebuilder:printcolumn:name="Exposed",type=string,JSONPath=`.status.exposedAs`,priority=1,description="the Service callers reach this breaker through"
type CircuitBreaker struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   CircuitBreakerSpec   `json:"spec"`
	Status CircuitBreakerStatus `json:"status,omitempty"`
}

// CircuitBreakerList is a list of CircuitBreakers.
// +kubebuilder:object:root=true
type CircuitBreakerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CircuitBreaker `json:"items"`
}

func init() {
	SchemeBuilder.Register(&CircuitBreaker{}, &CircuitBreakerList{})
}
