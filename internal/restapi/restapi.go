// Package restapi serves the REST API and the dashboard on --api-bind-address:
// live breaker state from the registry, and resets that go through the
// reset annotation so they are recorded on the resource.
package restapi

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// DefaultResetTimeout is how long a reset waits for the controller to handle it.
const DefaultResetTimeout = 5 * time.Second

// Limits of the API's HTTP server.
const (
	// ReadTimeout bounds reading a whole request; the API's requests have no body to speak of.
	ReadTimeout = 10 * time.Second
	// WriteTimeout bounds a whole exchange: a reset waits up to its
	// timeout for the controller, then answers.
	WriteTimeout = DefaultResetTimeout + 10*time.Second
	// IdleTimeout closes keep-alive connections the dashboard left idle.
	IdleTimeout = 60 * time.Second
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes = 16 << 10
)

// NewServer returns the API's HTTP server on addr with the limits above.
func NewServer(addr string, handler http.Handler) *http.Server {
	return &http.Server{
		Addr: addr, Handler: handler,
		ReadHeaderTimeout: ReadTimeout, ReadTimeout: ReadTimeout, WriteTimeout: WriteTimeout,
		IdleTimeout: IdleTimeout, MaxHeaderBytes: MaxHeaderBytes,
	}
}

//go:embed dashboard.html
var dashboard []byte

// Options configure the API.
type Options struct {
	// ResetTimeout is how long a reset waits for the controller; default DefaultResetTimeout.
	ResetTimeout time.Duration
	// BindAddress is the address the API listens on: requests must name it,
	// or a loopback name, as their Host.
	BindAddress string
	// Log hears of resets, the only decisions the API makes.
	Log logr.Logger
}

// Server is the API's http.Handler. It serves only its user: a browser on
// this machine or at the end of a kubectl port-forward. Requests that name
// another host (DNS rebinding) and cross-site resets (CSRF) are refused.
type Server struct {
	registry *breaker.Registry
	client   client.Client
	clock    clock.PassiveClock
	opts     Options
	bindHost string
	mux      *http.ServeMux
	// crossOrigin refuses state-changing requests that a browser sends
	// from a page of another origin (Sec-Fetch-Site, else Origin against
	// Host); requests without either header, from curl or kubectl, pass.
	crossOrigin *http.CrossOriginProtection
}

// +kubebuilder:rbac:groups=circuitbreaker.io,resources=circuitbreakers,verbs=patch

// New returns the API over registry; c reads and annotates the resources.
func New(registry *breaker.Registry, c client.Client, clk clock.PassiveClock, opts Options) *Server {
	if opts.ResetTimeout <= 0 {
		opts.ResetTimeout = DefaultResetTimeout
	}
	s := &Server{registry: registry, client: c, clock: clk, opts: opts, mux: http.NewServeMux(), crossOrigin: http.NewCrossOriginProtection()}
	if host, _, err := net.SplitHostPort(opts.BindAddress); err == nil {
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
			s.bindHost = strings.ToLower(host)
		}
	}
	s.mux.HandleFunc("/{$}", s.serveDashboard)
	s.mux.HandleFunc("/api/circuit-breakers", s.list)
	s.mux.HandleFunc("/api/circuit-breakers/{namespace}/{name}", s.get)
	s.mux.HandleFunc("/api/circuit-breakers/{namespace}/{name}/reset", s.reset)
	s.mux.HandleFunc("/api/circuit-breakers/{namespace}/{name}/timeline", s.timeline)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such route: "+r.URL.Path)
	})
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	if !s.hostAllowed(r.Host) {
		writeError(w, http.StatusForbidden, "this API answers only requests for its own address or a loopback name (use kubectl port-forward)")
		return
	}
	s.mux.ServeHTTP(w, r)
}

// hostAllowed reports whether a request's Host names this API: a loopback
// name or address, or the host of the bind address. Any other name is a
// page that rebound its own name to us.
func (s *Server) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") || (s.bindHost != "" && host == s.bindHost) {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sameSite refuses a state-changing request that a page of another site
// could have sent, as the standard library's CrossOriginProtection decides.
func (s *Server) sameSite(w http.ResponseWriter, r *http.Request) bool {
	if err := s.crossOrigin.Check(r); err != nil {
		writeError(w, http.StatusForbidden, "cross-site request refused: "+err.Error())
		return false
	}
	return true
}

// Entry is one breaker as the API shows it.
type Entry struct {
	Name             string  `json:"name"`
	Namespace        string  `json:"namespace"`
	State            string  `json:"state"`
	FailureCount     uint32  `json:"failure_count"`
	FailureThreshold uint32  `json:"failure_threshold"`
	RecoveryTimeout  float64 `json:"recovery_timeout"`
	LastFailureTime  int64   `json:"last_failure_time"`
	TimeRemaining    int64   `json:"time_remaining"`
	// RequestsTotal and RejectionsTotal count calls admitted and refused since
	// the manager started; the dashboard turns them into rates.
	RequestsTotal   uint64         `json:"requests_total"`
	RejectionsTotal uint64         `json:"rejections_total"`
	History         []HistoryEntry `json:"history"`
	// Replicas is each replica's view, from the resource's status;
	// OpenReplicas says how many of them have the circuit open ("1/2").
	// State above is this replica's, which follows the fleet's decisions.
	Replicas     []ReplicaEntry `json:"replicas"`
	OpenReplicas string         `json:"open_replicas"`
	// Mode is Enforce, Observe, ForcedOpen or Disabled; in Observe the
	// state is what the breaker would do, and nothing is rejected.
	Mode string `json:"mode"`
	// LastOpenReason is the rule that last opened it; ConsecutiveOpens the
	// openings since it last closed.
	LastOpenReason   string `json:"last_open_reason"`
	ConsecutiveOpens uint32 `json:"consecutive_opens"`
	// FailureRate and SlowCallRate are the rate window's, 0..1 (0 without one).
	FailureRate  float64 `json:"failure_rate"`
	SlowCallRate float64 `json:"slow_call_rate"`
	// ExposedAs is the Service name callers reach it by (spec.expose), from
	// the status; empty when not exposed.
	ExposedAs string `json:"exposed_as,omitempty"`
	// Endpoints are a Service upstream's, from the status: "usable/ready"
	// and the ejected ones; absent for URL upstreams.
	Endpoints *EndpointsEntry `json:"endpoints,omitempty"`
}

// EndpointsEntry is a Service upstream's endpoints; until is Unix seconds.
type EndpointsEntry struct {
	Summary string         `json:"summary"`
	Ejected []EjectedEntry `json:"ejected"`
}

// EjectedEntry is one ejected endpoint.
type EjectedEntry struct {
	Address string `json:"address"`
	Pod     string `json:"pod,omitempty"`
	Until   int64  `json:"until"`
}

// ReplicaEntry is one replica's view; last_update is Unix seconds.
type ReplicaEntry struct {
	Name         string `json:"name"`
	State        string `json:"state"`
	FailureCount int32  `json:"failure_count"`
	LastUpdate   int64  `json:"last_update"`
}

// HistoryEntry is one transition; time is Unix seconds.
type HistoryEntry struct {
	Time   int64  `json:"time"`
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason"`
}

// apiState spells a state the way the API does.
func apiState(s breaker.State) string {
	switch s {
	case breaker.StateOpen:
		return "open"
	case breaker.StateHalfOpen:
		return "half-open"
	}
	return "closed"
}

// apiStatusStates spells the status's states the way the API does.
var apiStatusStates = map[string]string{
	cbv1.StateClosed: apiState(breaker.StateClosed), cbv1.StateOpen: apiState(breaker.StateOpen), cbv1.StateHalfOpen: apiState(breaker.StateHalfOpen),
}

// entry is the breaker as the API shows it: live state from this replica's
// registry, the fleet's from status (nil when the cache has no resource).
func (s *Server) entry(key breaker.Key, b *breaker.Breaker, status *cbv1.CircuitBreakerStatus) Entry {
	snap := b.Snapshot()
	namespace, name := key.Split()
	e := Entry{
		Name:             name,
		Namespace:        namespace,
		State:            apiState(snap.State),
		FailureCount:     snap.Failures,
		FailureThreshold: snap.Settings.FailureThreshold,
		RecoveryTimeout:  snap.Settings.RecoveryTimeout.Seconds(),
		RequestsTotal:    snap.Allowed,
		RejectionsTotal:  snap.Rejected,
		History:          make([]HistoryEntry, 0, len(snap.History)),
		Replicas:         []ReplicaEntry{},
		Mode:             snap.Settings.Mode.String(),
		LastOpenReason:   string(snap.LastOpenReason),
		ConsecutiveOpens: snap.ConsecutiveOpens,
		FailureRate:      snap.FailureRate(),
		SlowCallRate:     snap.SlowCallRate(),
	}
	if status != nil {
		e.OpenReplicas = status.OpenReplicas
		e.ExposedAs = status.ExposedAs
		if ep := status.Endpoints; ep != nil {
			e.Endpoints = &EndpointsEntry{Summary: ep.Summary, Ejected: make([]EjectedEntry, 0, len(ep.EjectedEndpoints))}
			for _, x := range ep.EjectedEndpoints {
				e.Endpoints.Ejected = append(e.Endpoints.Ejected, EjectedEntry{Address: x.Address, Pod: x.Pod, Until: x.Until.Unix()})
			}
		}
		for _, r := range status.Replicas {
			e.Replicas = append(e.Replicas, ReplicaEntry{Name: r.Name, State: apiStatusStates[r.State], FailureCount: r.FailureCount, LastUpdate: r.LastUpdate.Unix()})
		}
	}
	if !snap.LastFailure.IsZero() {
		e.LastFailureTime = snap.LastFailure.Unix()
	}
	if snap.State == breaker.StateOpen {
		e.TimeRemaining = breaker.WholeSecondsUntil(snap.OpenUntil, s.clock.Now())
	}
	for _, t := range snap.History {
		e.History = append(e.History, HistoryEntry{Time: t.At.Unix(), From: apiState(t.From), To: apiState(t.To), Reason: t.Reason})
	}
	return e
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet) {
		return
	}
	key, b, ok := s.lookup(w, r)
	if !ok {
		return
	}
	var status *cbv1.CircuitBreakerStatus
	namespace, name := key.Split()
	var cb cbv1.CircuitBreaker
	if err := s.client.Get(r.Context(), client.ObjectKey{Namespace: namespace, Name: name}, &cb); err == nil {
		status = &cb.Status
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "circuit_breaker": s.entry(key, b, status)})
}

// Timeline is a breaker's last hour as this replica saw it, in one-minute
// points, oldest first: none before the breaker's first call here, and
// none at all for a breaker without traffic.
type Timeline struct {
	StepSeconds int             `json:"step_seconds"`
	Points      []TimelinePoint `json:"points"`
}

// TimelinePoint is one minute: time is its start in Unix seconds; calls
// are the calls that ended in it with a verdict, failures and slow calls
// among them; p99_ms their approximate 99th percentile latency to the
// verdict (within 20%); state the worst state of the minute.
// A minute without traffic is a zero point in the state the breaker had.
type TimelinePoint struct {
	Time       int64   `json:"time"`
	Calls      uint32  `json:"calls"`
	Failures   uint32  `json:"failures"`
	Rejections uint32  `json:"rejections"`
	Slow       uint32  `json:"slow"`
	P99Ms      float64 `json:"p99_ms"`
	State      string  `json:"state"`
}

func (s *Server) timeline(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet) {
		return
	}
	_, b, ok := s.lookup(w, r)
	if !ok {
		return
	}
	out := Timeline{StepSeconds: int(time.Minute / time.Second), Points: []TimelinePoint{}}
	if t := b.Timeline(); t != nil {
		for _, p := range t.Points(s.clock.Now()) {
			out.Points = append(out.Points, TimelinePoint{
				Time: p.Time.Unix(), Calls: p.Calls, Failures: p.Failures, Rejections: p.Rejections, Slow: p.Slow,
				P99Ms: math.Round(float64(p.P99)/float64(time.Microsecond)) / 1000, State: apiState(p.State),
			})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "timeline": out})
}

// reset sets the reset annotation, as `kubectl annotate` would, and answers
// once the controller has handled it.
func (s *Server) reset(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodPost) || !s.sameSite(w, r) {
		return
	}
	key, _, ok := s.lookup(w, r)
	if !ok {
		return
	}
	namespace, name := key.Split()
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.ResetTimeout)
	defer cancel()
	value := strconv.FormatInt(s.clock.Now().UnixNano(), 10)
	var cb cbv1.CircuitBreaker
	err := s.client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &cb)
	if err == nil {
		patch := client.MergeFrom(cb.DeepCopy())
		if cb.Annotations == nil {
			cb.Annotations = map[string]string{}
		}
		cb.Annotations[cbv1.ResetAnnotation] = value
		err = s.client.Patch(ctx, &cb, patch)
	}
	log := s.opts.Log.WithValues("namespace", namespace, "name", name, "value", value, "remote", r.RemoteAddr)
	switch {
	case apierrors.IsNotFound(err):
		writeError(w, http.StatusNotFound, fmt.Sprintf("Circuit breaker '%s' not found", key))
		return
	case err != nil:
		// The details (RBAC, service account names) are for the log, not the caller.
		log.Error(err, "reset through the API failed")
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("Circuit breaker '%s' could not be reset: the manager could not annotate it (see its log)", key))
		return
	}
	log.Info("reset requested through the API")
	if err := s.waitForReset(ctx, client.ObjectKeyFromObject(&cb), value); err != nil {
		log.Info("reset not handled in time", "timeout", s.opts.ResetTimeout, "error", err.Error())
		writeError(w, http.StatusGatewayTimeout, fmt.Sprintf(
			"Circuit breaker '%s': reset requested (%s=%s) but not handled by the controller within %s: %v",
			key, cbv1.ResetAnnotation, value, s.opts.ResetTimeout, err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "message": fmt.Sprintf("Circuit breaker '%s' reset successfully", key)})
}

func (s *Server) waitForReset(ctx context.Context, key client.ObjectKey, value string) error {
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	for {
		var cb cbv1.CircuitBreaker
		if err := s.client.Get(ctx, key, &cb); err == nil && cb.Status.LastHandledReset == value {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// lookup finds the breaker named by the path, or answers 400 or 404.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) (breaker.Key, *breaker.Breaker, bool) {
	namespace, name := r.PathValue("namespace"), r.PathValue("name")
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid namespace %q: %s", namespace, strings.Join(errs, "; ")))
		return "", nil, false
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid name %q: %s", name, strings.Join(errs, "; ")))
		return "", nil, false
	}
	key := breaker.NewKey(namespace, name)
	b, ok := s.registry.Get(key)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("Circuit breaker '%s' not found", key))
		return "", nil, false
	}
	return key, b, true
}

func (s *Server) serveDashboard(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet) {
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(dashboard)
}

func allowMethod(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return true
	}
	w.Header().Set("Allow", method)
	writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed: use %s", r.Method, method))
	return false
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func writeError(w http.ResponseWriter, status int, message string) {
	writeJSON(w, status, map[string]any{"success": false, "error": message})
}
