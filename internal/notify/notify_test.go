package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
	"github.com/circuitbreaker-io/operator/internal/notify"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

var at = time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)

// receiver records notifications; it answers each request with the next of
// its scripted status codes (200 once they run out).
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	got      []notify.Notification
	attempts atomic.Int32
	script   []int
}

func newReceiver(t *testing.T, script ...int) *receiver {
	r := &receiver{script: script}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := int(r.attempts.Add(1))
		if n <= len(r.script) && r.script[n-1] != http.StatusOK {
			w.WriteHeader(r.script[n-1])
			return
		}
		var got notify.Notification
		if req.Header.Get("Content-Type") != "application/json" || json.NewDecoder(req.Body).Decode(&got) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.got = append(r.got, got)
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) received() []notify.Notification {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]notify.Notification(nil), r.got...)
}

func run(t *testing.T, w *notify.Webhook) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestDelivery(t *testing.T) {
	g := NewWithT(t)
	r := newReceiver(t)
	w := newWebhook(t, r.URL, notify.Options{})
	run(t, w)
	w.Notify(breaker.NewKey("shop", "order-api"), breaker.Transition{
		From: breaker.StateClosed, To: breaker.StateOpen, At: at, Reason: "5 consecutive failures, last: 503",
		OpenReason: breaker.OpenConsecutiveFailures,
	})
	w.Notify(breaker.NewKey("shop", "order-api"), breaker.Transition{
		From: breaker.StateOpen, To: breaker.StateHalfOpen, At: at.Add(30 * time.Second), Reason: "recovery timeout of 30s elapsed",
	})
	g.Eventually(r.received).Should(Equal([]notify.Notification{
		{Namespace: "shop", Name: "order-api", From: "Closed", To: "Open", Reason: "5 consecutive failures, last: 503",
			OpenReason: "ConsecutiveFailures", Time: at},
		{Namespace: "shop", Name: "order-api", From: "Open", To: "HalfOpen", Reason: "recovery timeout of 30s elapsed", Time: at.Add(30 * time.Second)},
	}), "in order")
}

func TestRetryAfterReceiverError(t *testing.T) {
	g := NewWithT(t)
	r := newReceiver(t, http.StatusInternalServerError, http.StatusServiceUnavailable)
	w := newWebhook(t, r.URL, notify.Options{Backoff: 10 * time.Millisecond})
	run(t, w)
	w.Notify(breaker.NewKey("shop", "a"), breaker.Transition{From: breaker.StateClosed, To: breaker.StateOpen, At: at})
	g.Eventually(r.received).Should(HaveLen(1))
	g.Expect(r.attempts.Load()).To(Equal(int32(3)), "two failed attempts, then delivery")
}

func TestGivesUpAfterItsAttempts(t *testing.T) {
	g := NewWithT(t)
	r := newReceiver(t, 500, 500, 500, 200)
	w := newWebhook(t, r.URL, notify.Options{Attempts: 3, Backoff: time.Millisecond})
	run(t, w)
	w.Notify(breaker.NewKey("shop", "a"), breaker.Transition{From: breaker.StateClosed, To: breaker.StateOpen, At: at})
	w.Notify(breaker.NewKey("shop", "b"), breaker.Transition{From: breaker.StateClosed, To: breaker.StateOpen, At: at})
	g.Eventually(r.received).Should(HaveLen(1))
	g.Expect(r.received()[0].Name).To(Equal("b"), "a was given up after 3 attempts; b went on")
}

// A receiver that hangs must not slow proxied requests: transitions caused
// by traffic are queued, and once the bounded queue is full they are dropped.
func TestHangingReceiverDoesNotDelayTheDataPlane(t *testing.T) {
	g := NewWithT(t)
	hang := make(chan struct{})
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer receiver.Close()
	defer close(hang)
	reg := prometheus.NewRegistry()
	w := newWebhook(t, receiver.URL, notify.Options{QueueSize: 2, AttemptTimeout: time.Minute, Registerer: reg})
	run(t, w)

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer upstream.Close()
	series := metrics.NewBreakers(prometheus.NewRegistry())
	table := proxy.NewTable(series)
	registry := breaker.NewRegistry(clock.RealClock{})
	registry.OnTransition(w.Notify)
	key := breaker.NewKey("shop", "a")
	target, _ := url.Parse(upstream.URL)
	codes, _ := proxy.ParseStatusCodes([]string{"5xx"})
	route := proxy.RouteConfig{Target: target, Timeout: 5 * time.Second, StreamIdleTimeout: time.Minute, MaxConcurrent: 16, FailureCodes: codes}
	px := httptest.NewServer(proxy.New(table, clock.RealClock{}, proxy.Options{LoopToken: "test"}))
	defer px.Close()
	for i := range 20 {
		// Every request opens a fresh breaker: one transition per request.
		registry.Delete(key)
		b, _ := registry.Upsert(key, fmt.Sprint(i), breaker.Settings{FailureThreshold: 1}, nil)
		table.Set(key, b, route)
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(px.URL + "/shop/a/")
		g.Expect(err).NotTo(HaveOccurred(), "request %d completed while the receiver hangs", i)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		g.Expect(resp.StatusCode).To(Equal(500))
	}
	g.Expect(w.Dropped()).To(BeNumerically(">=", 20-2-1), "the queue stayed bounded: one in delivery, two queued, the rest dropped")
	g.Expect(counterValue(g, reg, "circuitbreaker_notifications_dropped_total")).To(BeNumerically("==", w.Dropped()))
}

// counterValue reads the counter called name from reg.
func counterValue(g Gomega, reg *prometheus.Registry, name string) float64 {
	families, err := reg.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	g.Expect(name).To(BeEmpty(), "metric not registered")
	return 0
}

func newWebhook(t *testing.T, target string, opts notify.Options) *notify.Webhook {
	w, err := notify.NewWebhook(target, opts)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return w
}

func TestBadWebhookURLsAreRefused(t *testing.T) {
	for _, bad := range []string{"", "receiver.example.com/hook", "ftp://receiver.example.com", "http://", "::not a url"} {
		t.Run(bad, func(t *testing.T) {
			g := NewWithT(t)
			w, err := notify.NewWebhook(bad, notify.Options{})
			g.Expect(w).To(BeNil())
			g.Expect(err).To(MatchError(fmt.Sprintf("webhook URL %q is not an absolute http or https URL", bad)))
		})
	}
}
