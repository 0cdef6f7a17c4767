package controller

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// With several replicas, each keeps live breakers so its proxy serves, but
// only the leader writes status and Events; a new leader writes its own view.
func TestEveryReplicaServesAndOnlyTheLeaderWrites(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	leader := startManager(t, ns, Options{}, withLeaderElection(ns))
	g.Eventually(leader.elector.Leading).Should(BeTrue())
	follower := startManager(t, ns, Options{}, withLeaderElection(ns))
	g.Expect(k8sClient.Create(context.Background(), newCircuitBreaker(ns, "order-api", withThreshold(2), withRecovery(time.Hour)))).To(Succeed())

	fromLeader := liveBreaker(g, leader, ns, "order-api")
	fromFollower := liveBreaker(g, follower, ns, "order-api")
	g.Expect(fromFollower).NotTo(BeIdenticalTo(fromLeader), "each replica has its own live breaker")
	g.Eventually(func(g Gomega) {
		g.Expect(getBreaker(g, ns, "order-api").Status.State).To(Equal(cbv1.StateClosed))
	}).Should(Succeed())

	failCalls(g, fromFollower, 2)
	g.Expect(fromFollower.Snapshot().State).To(Equal(breaker.StateOpen))
	// Once the leader has written a later generation, the follower's
	// transition has had every chance to reach the status.
	bumpAndObserve(g, ns, "order-api")
	g.Expect(getBreaker(g, ns, "order-api").Status.State).To(Equal(cbv1.StateClosed), "the status is the leader's view")
	g.Expect(follower.statusPatches.Load()).To(BeZero(), "a follower never writes status")
	g.Expect(countPrefix(events(g, ns, "order-api"), "Opened:")).To(BeZero(), "nor Events")

	leader.stop()
	g.Eventually(follower.elector.Leading, 20*time.Second).Should(BeTrue())
	g.Eventually(func(g Gomega) {
		st := getBreaker(g, ns, "order-api").Status
		g.Expect(st.State).To(Equal(cbv1.StateOpen))
		g.Expect(st.FailureCount).To(Equal(int32(2)))
	}).Should(Succeed(), "the new leader writes its own state on election")
}
