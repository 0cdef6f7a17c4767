package controller

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// A transition has the same key on every replica and in the status, so
// whichever replica leads announces it once; distinct transitions have
// distinct keys.
func TestTransitionKeys(t *testing.T) {
	at := time.Date(2026, 12, 3, 12, 0, 0, 123456789, time.UTC)
	opened := breaker.Transition{From: breaker.StateClosed, To: breaker.StateOpen, At: at, Reason: "2 consecutive failures, last: 503"}
	// The same opening followed by another replica: the time as the
	// status entry carried it (microseconds), the reason prefixed.
	followed := breaker.Transition{From: breaker.StateClosed, To: breaker.StateOpen, At: at.Truncate(time.Microsecond),
		Reason: "following replica a: 2 consecutive failures, last: 503"}
	halfOpen := func(after time.Duration) breaker.Transition {
		return breaker.Transition{From: breaker.StateOpen, To: breaker.StateHalfOpen, At: at.Add(time.Minute + after), Reason: "recovery timeout of 1m0s elapsed"}
	}
	reset := func(after time.Duration) breaker.Transition {
		return breaker.Transition{From: breaker.StateOpen, To: breaker.StateClosed, At: at.Add(after), Reset: true,
			Reason: resetReasonPrefix + cbv1.ResetAnnotation + "=r1"}
	}
	cases := []struct {
		name     string
		one, two []breaker.Transition
		same     bool
	}{
		{"an opening and the same opening followed", []breaker.Transition{opened}, []breaker.Transition{followed}, true},
		{"HalfOpen reached by each replica by itself", []breaker.Transition{opened, halfOpen(0)}, []breaker.Transition{followed, halfOpen(time.Second)}, true},
		{"a reset made by each replica by itself", []breaker.Transition{reset(0)}, []breaker.Transition{reset(time.Second)}, true},
		{"two openings", []breaker.Transition{opened}, []breaker.Transition{{To: breaker.StateOpen, At: at.Add(time.Second)}}, false},
		{"an opening and a closing at once", []breaker.Transition{opened}, []breaker.Transition{{To: breaker.StateClosed, At: at}}, false},
		{"HalfOpen after two openings", []breaker.Transition{opened, halfOpen(0)},
			[]breaker.Transition{{To: breaker.StateOpen, At: at.Add(time.Second)}, halfOpen(0)}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			one, two := liveKeys(tc.one), liveKeys(tc.two)
			last := func(keys []string) string { return keys[len(keys)-1] }
			if tc.same {
				g.Expect(last(one)).To(Equal(last(two)))
			} else {
				g.Expect(last(one)).NotTo(Equal(last(two)))
			}
			// The status has the same key as the live breaker.
			var status cbv1.CircuitBreakerStatus
			applySnapshot(&status, breaker.Snapshot{History: tc.one})
			g.Expect(storedKeys(status.History)).To(Equal(one))
		})
	}
}

// The status leaves out the transitions still to announce, and only those.
func TestWithoutPending(t *testing.T) {
	g := NewWithT(t)
	at := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	history := []cbv1.TransitionRecord{
		{Time: metav1.NewMicroTime(at), From: cbv1.StateClosed, To: cbv1.StateOpen},
		{Time: metav1.NewMicroTime(at.Add(time.Minute)), From: cbv1.StateOpen, To: cbv1.StateHalfOpen},
		{Time: metav1.NewMicroTime(at.Add(2 * time.Minute)), From: cbv1.StateHalfOpen, To: cbv1.StateClosed},
	}
	keys := storedKeys(history)
	g.Expect(withoutPending(history, nil)).To(Equal(history))
	g.Expect(withoutPending(history, map[string]bool{keys[1]: true, keys[2]: true})).To(Equal(history[:1]))
	g.Expect(history).To(HaveLen(3), "the status's own history is not changed")
}

// notLeading is a replica that follows.
type notLeading struct{}

func (notLeading) Leading() bool                   { return false }
func (notLeading) OnElected(func(context.Context)) {}

// A breaker with nothing to log or announce leaves no record behind (most
// breakers never have a transition); one with a transition keeps its
// record, so that it is logged once.
func TestAnnouncementsKeptOnlyWithTransitions(t *testing.T) {
	g := NewWithT(t)
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC))
	r := &Reconciler{leader: notLeading{}}
	cb := &cbv1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "order-api", UID: "uid-1"}}
	key := breaker.NewKey(cb.Namespace, cb.Name)
	b := breaker.New(breaker.Settings{FailureThreshold: 1, RecoveryTimeout: time.Minute, HalfOpenMaxRequests: 1, SuccessThreshold: 1}, clk, breaker.Options{})

	_, err := r.announce(context.Background(), cb, key, b, b.Snapshot(), nil)
	g.Expect(err).NotTo(HaveOccurred())
	_, kept := r.announced.Load(key)
	g.Expect(kept).To(BeFalse(), "no transition: no record")

	g.Expect(b.Reset("r1", "reset")).To(BeTrue() /* a transition: Closed to Closed, logged */)
	_, err = r.announce(context.Background(), cb, key, b, b.Snapshot(), nil)
	g.Expect(err).NotTo(HaveOccurred())
	_, kept = r.announced.Load(key)
	g.Expect(kept).To(BeTrue(), "a transition logged: its record is kept")
}
