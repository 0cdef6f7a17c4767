package metricsauth

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/circuitbreaker-io/operator/internal/controlplane"
)

// env is the API server the reviews go to; tests that stop an API server
// start their own.
var env *envtest.Environment

func TestMain(m *testing.M) {
	os.Exit(runWithAPIServer(m))
}

func runWithAPIServer(m *testing.M) int {
	var err error
	if env, err = controlplane.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the API server:", err)
		}
	}()
	return m.Run()
}

// countingTransport counts the requests that reach the API server.
type countingTransport struct {
	next     http.RoundTripper
	requests atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.requests.Add(1)
	return c.next.RoundTrip(r)
}

// fixture is a metrics endpoint behind a Reviewer of one API server, with
// a fake clock and a count of the reviews' requests.
type fixture struct {
	clock    *clocktesting.FakeClock
	api      *countingTransport
	reviewer *Reviewer
	server   *httptest.Server
}

func newFixture(t *testing.T, config *rest.Config) *fixture {
	t.Helper()
	g := NewWithT(t)
	hc, err := rest.HTTPClientFor(config)
	g.Expect(err).NotTo(HaveOccurred())
	f := &fixture{clock: clocktesting.NewFakeClock(time.Now()), api: &countingTransport{next: hc.Transport}}
	hc.Transport = f.api
	f.reviewer, err = NewReviewer(config, hc, f.clock)
	g.Expect(err).NotTo(HaveOccurred())
	guarded, err := f.reviewer.Filter(logr.Discard(), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "circuitbreaker_state 1\n")
	}))
	g.Expect(err).NotTo(HaveOccurred())
	f.server = httptest.NewServer(guarded)
	t.Cleanup(f.server.Close)
	return f
}

// get sends method on path with the Authorization header (none if empty)
// and returns the status and body.
func (f *fixture) get(g Gomega, method, path, authorization string) (int, string) {
	req, err := http.NewRequest(method, f.server.URL+path, nil)
	g.Expect(err).NotTo(HaveOccurred())
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := f.server.Client().Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	return resp.StatusCode, string(body)
}

// tokens makes two service accounts in a new namespace of the API server
// config reaches: reader, bound to a role that may GET /metrics, and nosy,
// bound to nothing. It returns a token of each.
func tokens(t *testing.T, config *rest.Config, namespace string) (reader, nosy string) {
	t.Helper()
	g := NewWithT(t)
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(config)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	role := "metrics-reader-" + namespace
	_, err = cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules:      []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}},
	}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "reader", Namespace: namespace}},
	}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	token := func(name string) string {
		_, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		return tr.Status.Token
	}
	return token("reader"), token("nosy")
}

func TestOnlyAllowedTokensReadTheMetrics(t *testing.T) {
	f := newFixture(t, env.Config)
	reader, nosy := tokens(t, env.Config, "who-reads")
	for _, tc := range []struct {
		name, method, path, authorization string
		status                            int
	}{
		{"a token bound to a role that may get /metrics", http.MethodGet, "/metrics", "Bearer " + reader, http.StatusOK},
		{"the scheme in any letter case", http.MethodGet, "/metrics", "bearer " + reader, http.StatusOK},
		{"words after the token, which the API server ignores", http.MethodGet, "/metrics", "Bearer " + reader + " more", http.StatusOK},
		{"two spaces, which the API server reads as an empty token", http.MethodGet, "/metrics", "Bearer  " + reader, http.StatusUnauthorized},
		{"a long request line", http.MethodGet, "/metrics?" + strings.Repeat("x", 60<<10), "Bearer forged", http.StatusUnauthorized},
		{"no Authorization header", http.MethodGet, "/metrics", "", http.StatusUnauthorized},
		{"basic credentials", http.MethodGet, "/metrics", "Basic cmVhZGVyOnB3", http.StatusUnauthorized},
		{"a bearer without a token", http.MethodGet, "/metrics", "Bearer ", http.StatusUnauthorized},
		{"a forged token", http.MethodGet, "/metrics", "Bearer not-a-token", http.StatusUnauthorized},
		{"a token bound to nothing", http.MethodGet, "/metrics", "Bearer " + nosy, http.StatusForbidden},
		{"the reader's token with a verb its role lacks", http.MethodPost, "/metrics", "Bearer " + reader, http.StatusForbidden},
		{"the reader's token on a path its role lacks", http.MethodGet, "/debug", "Bearer " + reader, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			status, body := f.get(g, tc.method, tc.path, tc.authorization)
			g.Expect(status).To(Equal(tc.status), body)
			if tc.status == http.StatusOK {
				g.Expect(body).To(Equal("circuitbreaker_state 1\n"))
			} else {
				g.Expect(body).NotTo(ContainSubstring("circuitbreaker_"), "a refusal shows no metrics")
			}
			if tc.status == http.StatusForbidden {
				g.Expect(body).To(ContainSubstring("system:serviceaccount:who-reads:"), "a denial names the user")
			}
		})
	}
}

func TestDecisionsAreReusedForTheirTime(t *testing.T) {
	f := newFixture(t, env.Config)
	reader, nosy := tokens(t, env.Config, "reused")
	for _, tc := range []struct {
		name   string
		token  string
		status int
		fresh  time.Duration
	}{
		{"allowed", reader, http.StatusOK, allowedFor},
		{"denied", nosy, http.StatusForbidden, deniedFor},
		{"unauthenticated", "not-a-token", http.StatusUnauthorized, unauthorizedFor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			before := f.api.requests.Load()
			status, _ := f.get(g, http.MethodGet, "/metrics", "Bearer "+tc.token)
			g.Expect(status).To(Equal(tc.status))
			reviewed := f.api.requests.Load()
			g.Expect(reviewed).To(BeNumerically(">", before), "the first request is reviewed")

			f.clock.Step(tc.fresh - time.Second)
			status, _ = f.get(g, http.MethodGet, "/metrics", "Bearer "+tc.token)
			g.Expect(status).To(Equal(tc.status))
			g.Expect(f.api.requests.Load()).To(Equal(reviewed), "a fresh decision is reused without asking the API server")

			f.clock.Step(time.Second)
			status, _ = f.get(g, http.MethodGet, "/metrics", "Bearer "+tc.token)
			g.Expect(status).To(Equal(tc.status))
			g.Expect(f.api.requests.Load()).To(BeNumerically(">", reviewed), "a decision as old as its time is asked again")
		})
	}
}

func TestTheCacheIsBounded(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t, env.Config)
	reader, _ := tokens(t, env.Config, "bounded")
	another, _ := tokens(t, env.Config, "bounded-too")
	held := func() int {
		f.reviewer.mu.Lock()
		defer f.reviewer.mu.Unlock()
		return len(f.reviewer.decisions)
	}
	// reviews is how many API requests get made.
	reviews := func(token string, status int) int64 {
		before := f.api.requests.Load()
		got, _ := f.get(g, http.MethodGet, "/metrics", "Bearer "+token)
		g.Expect(got).To(Equal(status))
		return f.api.requests.Load() - before
	}

	g.Expect(reviews(reader, http.StatusOK)).To(BeNumerically(">", 0))
	for i := range maxDecisions - 1 {
		reviews(fmt.Sprintf("forged-%d", i), http.StatusUnauthorized)
	}
	g.Expect(held()).To(Equal(maxDecisions), "full")
	g.Expect(reviews(reader, http.StatusOK)).To(BeZero(), "a full cache keeps what it holds")

	// A new decision in a full cache: the refusals make room for it, the
	// allowed decision stays.
	g.Expect(reviews(another, http.StatusOK)).To(BeNumerically(">", 0))
	g.Expect(held()).To(Equal(2), "the two allowed decisions")
	g.Expect(reviews(another, http.StatusOK)).To(BeZero(), "the new decision is held")

	// However many bad tokens come, the cache stays bounded and the
	// allowed decisions stay in it.
	for i := range maxDecisions + 10 {
		reviews(fmt.Sprintf("forged-again-%d", i), http.StatusUnauthorized)
	}
	g.Expect(held()).To(BeNumerically("<=", maxDecisions))
	g.Expect(reviews(reader, http.StatusOK)).To(BeZero())
	g.Expect(reviews(another, http.StatusOK)).To(BeZero())
}

func TestKeysDoNotRunTogether(t *testing.T) {
	g := NewWithT(t)
	g.Expect(keyOf("ab", "get", "/metrics")).NotTo(Equal(keyOf("a", "bget", "/metrics")))
	g.Expect(keyOf("token", "get", "/metrics")).NotTo(Equal(keyOf("token", "ge", "t/metrics")))
	g.Expect(keyOf("token", "get", "/metrics")).To(Equal(keyOf("token", "get", "/metrics")))
}

// TestWhileTheAPIServerIsAway stops an API server of its own: an allowed
// token keeps reading the metrics for allowedWhileAway, and nothing else
// is decided without the API server.
func TestWhileTheAPIServerIsAway(t *testing.T) {
	g := NewWithT(t)
	own, err := controlplane.Start()
	g.Expect(err).NotTo(HaveOccurred())
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = own.Stop()
		}
	})
	f := newFixture(t, own.Config)
	reader, nosy := tokens(t, own.Config, "away")
	for _, token := range []string{reader, nosy} {
		status, _ := f.get(g, http.MethodGet, "/metrics", "Bearer "+token)
		g.Expect(status).To(BeElementOf(http.StatusOK, http.StatusForbidden))
	}

	g.Expect(own.Stop()).To(Succeed())
	stopped = true
	f.reviewer.timeout = time.Second // a stopped server refuses at once; the bound is for a hung one

	f.clock.Step(allowedFor)
	status, body := f.get(g, http.MethodGet, "/metrics", "Bearer "+reader)
	g.Expect(status).To(Equal(http.StatusOK), "an allowed token is reused while the API server is away")
	g.Expect(body).To(ContainSubstring("circuitbreaker_state"))

	status, body = f.get(g, http.MethodGet, "/metrics", "Bearer "+nosy)
	g.Expect(status).To(Equal(http.StatusServiceUnavailable), "a denial past its time is not reused")
	g.Expect(body).To(ContainSubstring("cannot reach the API server"))
	status, _ = f.get(g, http.MethodGet, "/metrics", "Bearer never-seen")
	g.Expect(status).To(Equal(http.StatusServiceUnavailable), "a token never reviewed is not let in")

	f.clock.Step(allowedWhileAway - allowedFor)
	status, _ = f.get(g, http.MethodGet, "/metrics", "Bearer "+reader)
	g.Expect(status).To(Equal(http.StatusServiceUnavailable), "an allowed decision is not reused past allowedWhileAway")
}

// TestCallersAtOnce sends allowed, denied and forged tokens from several
// callers at once (with -race: the cache is shared by every request).
func TestCallersAtOnce(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t, env.Config)
	reader, nosy := tokens(t, env.Config, "at-once")
	want := map[string]int{reader: http.StatusOK, nosy: http.StatusForbidden, "forged": http.StatusUnauthorized}
	var wg sync.WaitGroup
	var wrong atomic.Int64
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 15 {
				token := []string{reader, nosy, "forged"}[(i+j)%3]
				// Not f.get: a Gomega failure may not stop the test from
				// another goroutine.
				req, err := http.NewRequest(http.MethodGet, f.server.URL+"/metrics", nil)
				if err != nil {
					wrong.Add(1)
					continue
				}
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := f.server.Client().Do(req)
				if err != nil {
					wrong.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != want[token] {
					wrong.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	g.Expect(wrong.Load()).To(BeZero(), "every caller gets its token's answer")
}
