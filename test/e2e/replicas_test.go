//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func replicasStep(t *testing.T, g Gomega, c *cluster, up *upstream) {
	g.Expect(c.leaderElect).To(BeTrue(), "the cluster's manager runs with leader election")
	second := c.startReplica(t, secondReplica)
	c.kubectlApply(t, fmt.Sprintf(`apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: fleet, namespace: default}
spec: {upstream: {url: %q}, failureThreshold: 3, recoveryTimeout: 1h}
`, up.URL))
	first := "http://" + c.proxyAddr + "/default/fleet/x"
	other := "http://" + second.proxyAddr + "/default/fleet/x"
	up.failing.Store(false)
	for _, route := range []string{first, other} {
		g.Eventually(func() int { return httpGet(g, route) }, 10*time.Second).Should(Equal(200))
	}

	// Each trip: three failures through the first replica open it; then,
	// with the upstream healthy again, the second can only answer 503 by
	// following the first. Time from the first's opening to the second's
	// first rejection.
	const trips = 20
	var lags []time.Duration
	for trip := range trips {
		up.failing.Store(true)
		for range 3 {
			g.Expect(httpGet(g, first)).To(Equal(500))
		}
		opened := time.Now()
		up.failing.Store(false)
		g.Expect(httpDo(g, first).header.Get("X-Circuit-Breaker-State")).To(Equal("open"), "the first replica opened")
		var answer response
		g.Eventually(func() int {
			answer = httpDo(g, other)
			return answer.status
		}, 10*time.Second, 5*time.Millisecond).Should(Equal(503), "trip %d: the second replica follows", trip)
		lags = append(lags, time.Since(opened))
		g.Expect(answer.header.Get("X-Circuit-Breaker-State")).To(Equal("open"))
		if trip == 0 {
			// The status converges after the follow (each replica writes its
			// entry, the leader counts them): slower than the follow itself
			// when the API server is catching up on the outage step's 500
			// breakers and the second replica writes its entry of each.
			g.Eventually(func() string {
				return c.kubectlQuiet("get", "cb", "fleet", "-o", "custom-columns=STATE:.status.state,REPLICAS:.status.openReplicas", "--no-headers")
			}, 30*time.Second, 100*time.Millisecond).Should(MatchRegexp(`^Open\s+2/2\s*$`))
			g.Expect(c.kubectl(g, "get", "cb", "fleet")).To(MatchRegexp(`(?m)^NAME\s+STATE\s+FAILURES\s+THRESHOLD\s+TIMEOUT\s+AGE\s+REPLICAS\s+ENDPOINTS\s+MODE\n`+
				`fleet\s+Open\s+3\s+3\s+1h\s+\S+\s+2/2\s+Enforce$`), "kubectl get says how many replicas have it open")
			names := c.kubectl(g, "get", "cb", "fleet", "-o", "jsonpath={.status.replicas[*].name}")
			g.Expect(strings.Fields(names)).To(ConsistOf(primaryReplica, secondReplica))
		}
		// A reset closes both.
		c.kubectl(g, "annotate", "cb", "fleet", fmt.Sprintf("circuitbreaker.io/reset=trip-%d", trip), "--overwrite")
		for _, route := range []string{first, other} {
			g.Eventually(func() int { return httpGet(g, route) }, 10*time.Second, 10*time.Millisecond).Should(Equal(200), "trip %d: the reset closed both", trip)
		}
	}
	t.Logf("lags by trip: %v", lags)
	slices.Sort(lags)
	p50, p99 := lags[len(lags)/2], lags[(len(lags)*99+99)/100-1]
	t.Logf("second replica rejecting after the first opened, over %d trips: p50 %s, p99 %s, max %s",
		trips, p50.Round(time.Millisecond), p99.Round(time.Millisecond), lags[len(lags)-1].Round(time.Millisecond))

	// The leader stops: the second replica leads, its own trip reaches the
	// status, and the stopped replica's entry expires.
	c.stopManager(g)
	up.failing.Store(true)
	for range 3 {
		g.Expect(httpGet(g, other)).To(Equal(500))
	}
	up.failing.Store(false)
	g.Eventually(func() string {
		return c.kubectlQuiet("get", "cb", "fleet", "-o", "jsonpath={.status.state} {.status.replicas[*].name} {.status.openReplicas}")
	}, 40*time.Second, 200*time.Millisecond).Should(Equal("Open " + secondReplica + " 1/1"))
	_ = second.cmd.Process.Signal(syscall.SIGTERM)
	g.Eventually(second.exited, 20*time.Second).Should(BeClosed())
	c.startManager(t)
}
