// Package metricsauth guards the metrics endpoint as kubebuilder's scaffold
// does with controller-runtime's filters.WithAuthenticationAndAuthorization:
// the caller's bearer token is reviewed by the API server (a TokenReview),
// and the user it names must be allowed the request's verb on its path (a
// SubjectAccessReview for a non-resource URL, as RBAC's metrics-reader role
// grants).
//
// It is written here, on client-go's typed clients alone, because
// controller-runtime's filter links k8s.io/apiserver's authentication stack,
// and through it CEL, gRPC and OpenTelemetry, into the manager: 29 MB of a
// 78 MB binary and 18 MiB of every replica's resident memory
// (docs/benchmarks.md, bench-scale), for two API calls and a cache.
package metricsauth

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authenticationclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
	authorizationclient "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/circuitbreaker-io/operator/internal/textcut"
)

// How long a decision is reused. Unauthenticated and allowed follow
// controller-runtime's token cache (1 minute), denied its deny cache (30
// s); its allow cache keeps an authorization 5 minutes, this one no longer
// than the token's review, so a revoked token or a removed binding takes
// effect within a minute. A review that fails is not retried in place, as
// controller-runtime's five backed-off attempts are: the caller gets 503
// and Prometheus asks again at its next scrape. While the API server
// cannot answer, an allowed decision is reused for up to
// allowedWhileAway: Prometheus keeps scraping through an API server
// outage, which the data plane outlives and which is when its metrics
// matter most. Nothing else is decided without the API server.
const (
	allowedFor       = time.Minute
	unauthorizedFor  = time.Minute
	deniedFor        = 30 * time.Second
	allowedWhileAway = 10 * time.Minute
	// reviewTimeout bounds each of the two reviews, as controller-runtime's
	// bounds its one.
	reviewTimeout = 10 * time.Second
	// maxDecisions bounds the cache, each entry a digest and a status: a
	// full cache drops its refusals for new decisions (makeRoom); callers
	// that send many tokens take no more memory.
	maxDecisions = 1024
)

// Reviewer decides who may read the metrics, through the API server.
type Reviewer struct {
	tokens  authenticationclient.TokenReviewInterface
	access  authorizationclient.SubjectAccessReviewInterface
	clock   clock.PassiveClock
	timeout time.Duration

	mu        sync.Mutex
	decisions map[decisionKey]decision
}

// decisionKey is the digest of one token asking for one verb on one path:
// the cache holds no credentials, and an entry is the same few bytes
// however long a request line the caller sends (the method and path
// strings share the request line's memory, up to MaxHeaderBytes).
type decisionKey [sha256.Size]byte

// keyOf is the decision key of token, verb and path, each length-prefixed
// so that no two triples share a key.
func keyOf(token, verb, path string) decisionKey {
	h := sha256.New()
	for _, part := range [...]string{token, verb, path} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		_, _ = h.Write(n[:])
		_, _ = io.WriteString(h, part)
	}
	var k decisionKey
	h.Sum(k[:0])
	return k
}

// decision is an answer and when the API server gave it.
type decision struct {
	status int // http.StatusOK, StatusUnauthorized or StatusForbidden
	user   string
	at     time.Time
}

// NewReviewer reviews through the API server that config reaches.
func NewReviewer(config *rest.Config, httpClient *http.Client, clk clock.PassiveClock) (*Reviewer, error) {
	authn, err := authenticationclient.NewForConfigAndClient(config, httpClient)
	if err != nil {
		return nil, err
	}
	authz, err := authorizationclient.NewForConfigAndClient(config, httpClient)
	if err != nil {
		return nil, err
	}
	return &Reviewer{
		tokens:    authn.TokenReviews(),
		access:    authz.SubjectAccessReviews(),
		clock:     clk,
		timeout:   reviewTimeout,
		decisions: map[decisionKey]decision{},
	}, nil
}

// FilterProvider is for metricsserver.Options.FilterProvider.
func FilterProvider(config *rest.Config, httpClient *http.Client) (metricsserver.Filter, error) {
	r, err := NewReviewer(config, httpClient, clock.RealClock{})
	if err != nil {
		return nil, err
	}
	return r.Filter, nil
}

// Filter serves handler only to callers the API server allows.
func (r *Reviewer) Filter(log logr.Logger, handler http.Handler) (http.Handler, error) {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		token, ok := bearerToken(req)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "Unauthorized: a bearer token is required", http.StatusUnauthorized)
			return
		}
		d, err := r.decide(req.Context(), log, token, strings.ToLower(req.Method), req.URL.Path)
		switch {
		case err != nil:
			http.Error(w, "cannot reach the API server to review the token", http.StatusServiceUnavailable)
		case d.status == http.StatusUnauthorized:
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
		case d.status == http.StatusForbidden:
			http.Error(w, fmt.Sprintf("Authorization denied for user %s", d.user), http.StatusForbidden)
		case d.status == http.StatusOK:
			handler.ServeHTTP(w, req)
		default: // no decision of that kind exists: refuse, never serve
			http.Error(w, "Forbidden", http.StatusForbidden)
		}
	}), nil
}

// bearerToken is the request's "Authorization: Bearer <token>", read as
// the API server reads it (k8s.io/apiserver's bearertoken authenticator):
// the word after the scheme, which one space follows; anything after a
// second space is ignored.
func bearerToken(req *http.Request) (string, bool) {
	parts := strings.SplitN(strings.TrimSpace(req.Header.Get("Authorization")), " ", 3)
	if len(parts) < 2 || !strings.EqualFold(parts[0], "bearer") || parts[1] == "" {
		return "", false
	}
	return parts[1], true
}

// logged is s cut for a log line: a caller chooses its path's length.
func logged(s string) string { return textcut.Cut(s, 128) }

// decide returns the cached decision for the token, verb and path while it
// is fresh, and asks the API server otherwise. An error means there is no
// decision: the API server could not be asked, and no allowed decision of
// the last allowedWhileAway stands in.
func (r *Reviewer) decide(ctx context.Context, log logr.Logger, token, verb, path string) (decision, error) {
	key := keyOf(token, verb, path)
	now := r.clock.Now()
	r.mu.Lock()
	cached, found := r.decisions[key]
	r.mu.Unlock()
	if found && now.Sub(cached.at) < freshFor(cached.status) {
		return cached, nil
	}

	d, err := r.review(ctx, token, verb, path)
	if err != nil {
		if found && cached.status == http.StatusOK && now.Sub(cached.at) < allowedWhileAway {
			log.Info("metrics caller allowed on its last review: the API server cannot review it now",
				"user", cached.user, "reviewedAgo", now.Sub(cached.at).Round(time.Second).String(), "error", err.Error())
			return cached, nil
		}
		log.Error(err, "cannot review a metrics caller's token", "path", logged(path))
		return decision{}, err
	}
	d.at = now
	switch d.status {
	case http.StatusUnauthorized:
		log.V(1).Info("metrics caller refused: the API server does not authenticate its token", "path", logged(path))
	case http.StatusForbidden:
		log.V(1).Info("metrics caller refused: not allowed", "user", d.user, "verb", logged(verb), "path", logged(path))
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	_, replaces := r.decisions[key]
	if !replaces && len(r.decisions) >= maxDecisions {
		r.makeRoom(now)
	}
	if replaces || len(r.decisions) < maxDecisions {
		r.decisions[key] = d
	}
	return d, nil
}

// makeRoom drops, from a full cache, the decisions past their use and then
// every refusal: refusals only spare the API server a review, while an
// allowed decision also carries its caller through an outage, so callers
// that send many bad tokens never push out the scraper's. Called with mu
// held.
func (r *Reviewer) makeRoom(now time.Time) {
	for k, old := range r.decisions {
		if now.Sub(old.at) >= keptFor(old.status) {
			delete(r.decisions, k)
		}
	}
	if len(r.decisions) < maxDecisions {
		return
	}
	for k, old := range r.decisions {
		if old.status != http.StatusOK {
			delete(r.decisions, k)
		}
	}
}

// freshFor is how long a decision with this status is reused.
func freshFor(status int) time.Duration {
	switch status {
	case http.StatusOK:
		return allowedFor
	case http.StatusUnauthorized:
		return unauthorizedFor
	default:
		return deniedFor
	}
}

// keptFor is how long a decision is of use: an allowed one also while the
// API server is away.
func keptFor(status int) time.Duration {
	if status == http.StatusOK {
		return allowedWhileAway
	}
	return freshFor(status)
}

// review asks the API server who the token is, then whether that user may
// use the verb on the path.
func (r *Reviewer) review(ctx context.Context, token, verb, path string) (decision, error) {
	authnCtx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	tr, err := r.tokens.Create(authnCtx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token},
	}, metav1.CreateOptions{})
	if err != nil {
		return decision{}, fmt.Errorf("TokenReview: %w", err)
	}
	// A token the API server cannot read (a forged one) comes back
	// unauthenticated with status.error set: a refusal, not an outage.
	if !tr.Status.Authenticated {
		return decision{status: http.StatusUnauthorized}, nil
	}
	user := tr.Status.User
	extra := make(map[string]authorizationv1.ExtraValue, len(user.Extra))
	for k, v := range user.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	authzCtx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	sar, err := r.access.Create(authzCtx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:                  user.Username,
			UID:                   user.UID,
			Groups:                user.Groups,
			Extra:                 extra,
			NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: path, Verb: verb},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return decision{}, fmt.Errorf("SubjectAccessReview: %w", err)
	}
	if !sar.Status.Allowed || sar.Status.Denied {
		return decision{status: http.StatusForbidden, user: user.Username}, nil
	}
	return decision{status: http.StatusOK, user: user.Username}, nil
}
