package controller_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/controller"
)

// entryOf returns replica name's entry in the status, if there is one.
func entryOf(cb *cbv1.CircuitBreaker, name string) (cbv1.ReplicaStatus, bool) {
	return controller.FindEntry(cb.Status.Replicas, name)
}

// Each replica counts for itself, but what one decides, all do: an opening
// on one is followed by the other with the same openUntil, a probe failure
// re-opens both, successful probes close both, and so does a reset. The
// leader writes the top-level state and Events; each replica its entry.
func TestReplicasFollowEachOther(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	leader := startManager(t, ns, controller.Options{}, withLeaderElection(ns))
	g.Eventually(leader.Elector.Leading).Should(BeTrue())
	follower := startManager(t, ns, controller.Options{}, withLeaderElection(ns))
	g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "order-api", withThreshold(2), withRecovery(time.Hour)))).To(Succeed())
	fromLeader := liveBreaker(g, leader, ns, "order-api")
	fromFollower := liveBreaker(g, follower, ns, "order-api")
	g.Expect(fromFollower).NotTo(BeIdenticalTo(fromLeader), "each replica has its own live breaker")
	phase := func(name string, f func(g Gomega)) {
		if !t.Run(name, func(t *testing.T) { f(NewWithT(t)) }) {
			t.FailNow()
		}
	}

	phase("the follower opens on what it sees; the leader follows", func(g Gomega) {
		failCalls(g, fromFollower, 2)
		opened := fromFollower.Snapshot()
		g.Expect(opened.State).To(Equal(breaker.StateOpen))
		g.Eventually(func() breaker.State { return fromLeader.Snapshot().State }).Should(Equal(breaker.StateOpen), "the leader follows")
		g.Expect(fromLeader.OpenUntil()).To(BeTemporally("~", opened.OpenUntil, time.Microsecond), "with the same openUntil")
		g.Expect(fromLeader.Snapshot().Failures).To(BeZero(), "counts stay per replica")

		g.Eventually(func(g Gomega) {
			cb := getBreaker(g, ns, "order-api")
			g.Expect(cb.Status.State).To(Equal(cbv1.StateOpen))
			g.Expect(cb.Status.OpenReplicas).To(Equal("2/2"))
			mine, ok := entryOf(cb, follower.name)
			g.Expect(ok).To(BeTrue())
			g.Expect(mine.State).To(Equal(cbv1.StateOpen))
			g.Expect(mine.FailureCount).To(Equal(int32(2)))
			theirs, ok := entryOf(cb, leader.name)
			g.Expect(ok).To(BeTrue())
			g.Expect(theirs.State).To(Equal(cbv1.StateOpen))
			g.Expect(theirs.FailureCount).To(BeZero())
			g.Expect(theirs.Reason).To(HavePrefix("following replica " + follower.name + ": 2 consecutive failures"))
			g.Expect(tableRow(g, ns, "order-api", false)).To(HaveKeyWithValue("Replicas", "2/2"))
		}).Should(Succeed())
		g.Expect(follower.statusPatches.Load()).To(BeZero(), "a follower writes only its own entry")
		g.Expect(follower.entryWrites.Load()).To(BeNumerically(">", 0))
		g.Eventually(func() []string { return events(g, ns, "order-api") }).Should(ContainElement(HavePrefix("Opened: following replica "+follower.name)),
			"the leader records the fleet's transition, once")
		g.Expect(countPrefix(events(g, ns, "order-api"), "Opened:")).To(Equal(1))
	})

	phase("a reset closes both", func(g Gomega) {
		reset(g, ns, "order-api", "r1")
		g.Eventually(func() breaker.State { return fromFollower.Snapshot().State }).Should(Equal(breaker.StateClosed))
		g.Expect(fromLeader.Snapshot().State).To(Equal(breaker.StateClosed))
		g.Eventually(func(g Gomega) {
			g.Expect(getBreaker(g, ns, "order-api").Status.OpenReplicas).To(Equal("0/2"))
		}).Should(Succeed())
	})

	phase("a probe failure re-opens both; successful probes close both", func(g Gomega) {
		patchSpec(g, ns, "order-api", func(cb *cbv1.CircuitBreaker) { cb.Spec.RecoveryTimeout.Duration = time.Second })
		for _, b := range []*breaker.Breaker{fromLeader, fromFollower} {
			g.Eventually(func() time.Duration { return b.Snapshot().Settings.RecoveryTimeout }).Should(Equal(time.Second))
		}
		failCalls(g, fromLeader, 2)
		g.Eventually(func() breaker.State { return fromFollower.Snapshot().State }).ShouldNot(Equal(breaker.StateClosed))
		g.Eventually(func() breaker.State { return fromFollower.Snapshot().State }).Should(Equal(breaker.StateHalfOpen))
		probe, err := fromFollower.Allow()
		g.Expect(err).NotTo(HaveOccurred())
		probe.Failure(breaker.Failure{StatusCode: 502})
		reopened := fromFollower.Snapshot()
		g.Expect(reopened.State).To(Equal(breaker.StateOpen))
		g.Eventually(func() time.Time { return fromLeader.Snapshot().LastTransitionTime }).Should(BeTemporally("~", reopened.LastTransitionTime, time.Microsecond),
			"the probe failure re-opened the leader too")
		g.Eventually(func() breaker.State { return fromLeader.Snapshot().State }).Should(Equal(breaker.StateHalfOpen))
		probe, err = fromLeader.Allow()
		g.Expect(err).NotTo(HaveOccurred())
		probe.Success()
		g.Expect(fromLeader.Snapshot().State).To(Equal(breaker.StateClosed))
		var echoes atomic.Int64
		follower.Registry.OnTransition(func(breaker.Key, breaker.Transition) { echoes.Add(1) })
		g.Eventually(func() breaker.State { return fromFollower.Snapshot().State }).Should(Equal(breaker.StateClosed), "the close closed the follower")
		closedTransitions := echoes.Load()
		// Both entries say Closed once both replicas have written their views:
		// by then an echo would have moved the follower again.
		g.Eventually(func(g Gomega) {
			cb := getBreaker(g, ns, "order-api")
			g.Expect(cb.Status.OpenReplicas).To(Equal("0/2"))
			for _, h := range []*harness{leader, follower} {
				e, ok := entryOf(cb, h.name)
				g.Expect(ok).To(BeTrue())
				g.Expect(e.State).To(Equal(cbv1.StateClosed), h.name)
			}
		}).Should(Succeed())
		g.Expect(echoes.Load()).To(Equal(closedTransitions), "and it stays closed: nothing echoes back")
		g.Expect(fromFollower.Snapshot().State).To(Equal(breaker.StateClosed))
	})

	phase("the leader goes away: the follower leads, and the old leader's entry expires", func(g Gomega) {
		patchSpec(g, ns, "order-api", func(cb *cbv1.CircuitBreaker) { cb.Spec.RecoveryTimeout.Duration = time.Hour })
		g.Eventually(func() time.Duration { return fromFollower.Snapshot().Settings.RecoveryTimeout }).Should(Equal(time.Hour))
		leader.stop()
		g.Eventually(follower.Elector.Leading, 20*time.Second).Should(BeTrue())
		failCalls(g, fromFollower, 2)
		g.Eventually(func(g Gomega) {
			cb := getBreaker(g, ns, "order-api")
			g.Expect(cb.Status.State).To(Equal(cbv1.StateOpen), "the new leader's own trip reaches the status")
			_, stale := entryOf(cb, leader.name)
			g.Expect(stale).To(BeFalse(), "the stopped replica's entry expired")
			g.Expect(cb.Status.Replicas).To(HaveLen(1))
			g.Expect(cb.Status.OpenReplicas).To(Equal("1/1"))
		}, 30*time.Second).Should(Succeed())
	})
}

// patchSpec changes a breaker's spec and waits for every replica to see it.
func patchSpec(g Gomega, namespace, name string, change func(*cbv1.CircuitBreaker)) {
	cb := getBreaker(g, namespace, name)
	before := cb.DeepCopy()
	change(cb)
	g.Expect(k8sClient.Patch(context.Background(), cb, client.MergeFrom(before))).To(Succeed())
}

// A storm through two replicas against a flapping upstream: each replica
// writes its entry at most about once a second plus its transitions, and
// the leader the top-level status as often; nothing per request.
func TestStatusWritesStayBoundedUnderATwoReplicaStorm(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	first := startManager(t, ns, controller.Options{AllowURLUpstreams: true}, withLeaderElection(ns))
	g.Eventually(first.Elector.Leading).Should(BeTrue())
	second := startManager(t, ns, controller.Options{AllowURLUpstreams: true}, withLeaderElection(ns))
	upstream, failing := failingUpstream(t)
	g.Expect(k8sClient.Create(context.Background(), urlBreaker(ns, "flappy", upstream.URL, 5, time.Second))).To(Succeed())
	var routes []string
	for _, h := range []*harness{first, second} {
		route := proxyFor(t, h).URL + "/" + ns + "/flappy/"
		g.Eventually(func() int { return call(g, route) }).Should(Equal(200))
		routes = append(routes, route)
	}

	const storm = 5 * time.Second
	patchesBefore := []int64{first.statusPatches.Load(), second.statusPatches.Load()}
	entriesBefore := []int64{first.entryWrites.Load(), second.entryWrites.Load()}
	var transitions [2]atomic.Int64
	for i, h := range []*harness{first, second} {
		h.Registry.OnTransition(func(breaker.Key, breaker.Transition) { transitions[i].Add(1) })
	}
	requests := stormThrough(failing, storm, routes...)
	g.Expect(requests).To(BeNumerically(">", 1000), "a storm")
	for i, h := range []*harness{first, second} {
		patches, entries := h.statusPatches.Load()-patchesBefore[i], h.entryWrites.Load()-entriesBefore[i]
		writes := patches + entries
		n := transitions[i].Load()
		t.Logf("replica %s (leading: %t): %d requests through both in %s; %d transitions; %d status writes: %d top-level, %d of its entry (%.1f/s in all)",
			h.name, h.Elector.Leading(), requests, storm, n, writes, patches, entries, float64(writes)/storm.Seconds())
		// Per second: one count flush of the entry, and as the leader one
		// of the top-level status; every transition may add one of each.
		perSecond := int64(1)
		if h.Elector.Leading() {
			perSecond = 2
		}
		g.Expect(writes).To(BeNumerically("<=", perSecond*(int64(storm/time.Second)+n+2)))
		g.Expect(writes).To(BeNumerically("<", requests/20), "nothing per request")
	}
}
