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
	// The next transition comes once the first was delivered: one queued
	// behind it would replace it (TestCoalescedPerBreaker).
	g.Eventually(r.received).Should(HaveLen(1))
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
	target, _ := url.Parse(upstream.URL)
	codes, _ := proxy.ParseStatusCodes([]string{"5xx"})
	route := proxy.RouteConfig{Target: target, Timeout: 5 * time.Second, StreamIdleTimeout: time.Minute, MaxConcurrent: 16, FailureCodes: codes}
	px := httptest.NewServer(proxy.New(table, clock.RealClock{}, proxy.Options{LoopToken: "test"}))
	defer px.Close()
	for i := range 20 {
		// Every request opens another breaker: one transition per request,
		// and none replaces another's notification.
		name := fmt.Sprint("a-", i)
		key := breaker.NewKey("shop", name)
		b, _ := registry.Upsert(key, "1", breaker.Settings{FailureThreshold: 1}, nil)
		table.Set(key, b, route)
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(px.URL + "/shop/" + name + "/")
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

// gate is a receiver the test paces: each request hands its notification to
// the test, which takes them one by one (next), and is answered once the
// test has opened the gate. Until then the first delivery is held, and the
// sender with it.
type gate struct {
	*httptest.Server
	delivered chan notify.Notification
	opened    chan struct{}
}

func newGate(t *testing.T) *gate {
	gt := &gate{delivered: make(chan notify.Notification), opened: make(chan struct{})}
	gt.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var n notify.Notification
		if json.NewDecoder(req.Body).Decode(&n) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		select {
		case gt.delivered <- n:
		case <-req.Context().Done():
			return
		}
		select {
		case <-gt.opened:
		case <-req.Context().Done():
		}
	}))
	t.Cleanup(gt.Close)
	return gt
}

func (gt *gate) open() { close(gt.opened) }

// next waits for the next notification the sender delivers.
func (gt *gate) next(g Gomega) notify.Notification {
	var n notify.Notification
	g.Eventually(gt.delivered).Should(Receive(&n))
	return n
}

// transition is the i-th transition of a breaker, told apart by its time.
func transition(i int) breaker.Transition {
	return breaker.Transition{From: breaker.StateClosed, To: breaker.StateOpen, At: at.Add(time.Duration(i) * time.Second)}
}

// One namespace's backlog, however large, and its flapping breaker do not
// crowd out another namespace: the quiet namespace's one notification is not
// dropped, and is delivered after at most one of the noisy namespace's
// besides the one in flight.
func TestNamespacesShareTheQueue(t *testing.T) {
	g := NewWithT(t)
	gt := newGate(t)
	w := newWebhook(t, gt.URL, notify.Options{})
	run(t, w)
	w.Notify(breaker.NewKey("noisy", "b-0"), transition(0))
	g.Expect(gt.next(g).Name).To(Equal("b-0"), "in flight, held by the receiver")
	for i := range 500 {
		w.Notify(breaker.NewKey("noisy", "flapping"), transition(i))
	}
	for i := 1; i < 2000; i++ {
		w.Notify(breaker.NewKey("noisy", fmt.Sprint("b-", i)), transition(0))
	}
	w.Notify(breaker.NewKey("quiet", "order-api"), transition(0))
	// 2,001 noisy breakers: one in flight, 1,024 queued (the flapping one
	// once), the rest dropped; quiet's took the place of noisy's oldest.
	g.Expect(w.Dropped()).To(BeNumerically("==", 2001-1-1024+1))
	gt.open()

	var delivered []string
	for range 2 {
		n := gt.next(g)
		delivered = append(delivered, n.Namespace+"/"+n.Name)
	}
	g.Expect(delivered).To(ContainElement("quiet/order-api"), "within one delivery per other namespace")
}

// A breaker's transitions while its notification waits replace it: the
// receiver gets the one in flight, if any, then the latest.
func TestCoalescedPerBreaker(t *testing.T) {
	cases := []struct {
		name string
		// inFlight: the first transition is being delivered, held by the
		// receiver, while the others come.
		inFlight bool
		want     []time.Time
	}{
		{"while the first is in flight", true, []time.Time{transition(0).At, transition(99).At}},
		{"before the sender runs", false, []time.Time{transition(99).At}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			gt := newGate(t)
			w := newWebhook(t, gt.URL, notify.Options{})
			key := breaker.NewKey("shop", "order-api")
			var got []time.Time
			first := 0
			if tc.inFlight {
				run(t, w)
				w.Notify(key, transition(0))
				got = append(got, gt.next(g).Time)
				first = 1
			}
			for i := first; i < 100; i++ {
				w.Notify(key, transition(i))
			}
			// Queued behind order-api in its namespace: once it arrives,
			// every notification of order-api has.
			w.Notify(breaker.NewKey("shop", "last"), transition(0))
			if !tc.inFlight {
				run(t, w)
			}
			gt.open()
			for n := gt.next(g); n.Name != "last"; n = gt.next(g) {
				got = append(got, n.Time)
			}
			g.Expect(got).To(Equal(tc.want))
			g.Expect(w.Dropped()).To(BeZero(), "a replaced notification is no drop")
		})
	}
}

// Namespaces take turns, each its breakers oldest first; a full queue drops
// the newcomer if its namespace holds the most, else evicts the oldest of the
// namespace that does, and counts either as a drop.
func TestQueueOrderAndDrops(t *testing.T) {
	cases := []struct {
		name      string
		queueSize int
		notify    []string // namespace/name, in order
		want      []string // delivered, in order
		dropped   int
	}{
		{"namespaces in turn, each oldest first", 0,
			[]string{"a/1", "a/2", "a/3", "b/1", "b/2", "c/1"},
			[]string{"a/1", "b/1", "c/1", "a/2", "b/2", "a/3"}, 0},
		{"a newer transition keeps the breaker's place", 0,
			[]string{"a/1", "a/2", "a/1"},
			[]string{"a/1", "a/2"}, 0},
		{"full: the newcomer of the fullest namespace is dropped", 2,
			[]string{"a/1", "a/2", "a/3"},
			[]string{"a/1", "a/2"}, 1},
		{"full: another namespace's newcomer evicts the fullest's oldest", 2,
			[]string{"a/1", "a/2", "b/1"},
			[]string{"a/2", "b/1"}, 1},
		{"full: the newcomer of a namespace as full as the fullest is dropped", 4,
			[]string{"a/1", "a/2", "b/1", "b/2", "b/3"},
			[]string{"a/1", "b/1", "a/2", "b/2"}, 1},
		{"full: each newcomer evicts from the namespace holding the most", 3,
			[]string{"a/1", "a/2", "a/3", "b/1", "c/1"},
			[]string{"a/3", "b/1", "c/1"}, 2},
		{"full: a newer transition of a queued breaker is no drop", 2,
			[]string{"a/1", "b/1", "a/1", "b/1"},
			[]string{"a/1", "b/1"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			gt := newGate(t)
			gt.open()
			reg := prometheus.NewRegistry()
			w := newWebhook(t, gt.URL, notify.Options{QueueSize: tc.queueSize, Registerer: reg})
			for i, key := range tc.notify {
				w.Notify(breaker.Key(key), transition(i))
			}
			g.Expect(w.Dropped()).To(BeNumerically("==", tc.dropped))
			g.Expect(counterValue(g, reg, "circuitbreaker_notifications_dropped_total")).To(BeNumerically("==", tc.dropped))
			run(t, w)
			var got []string
			for range tc.want {
				n := gt.next(g)
				got = append(got, n.Namespace+"/"+n.Name)
			}
			g.Expect(got).To(Equal(tc.want))
			// Queued after the last of them: the next delivered if nothing
			// else was left.
			w.Notify(breaker.NewKey("z", "after"), transition(0))
			g.Expect(gt.next(g).Name).To(Equal("after"), "nothing else was queued")
		})
	}
}
