package controller_test

import (
	"strconv"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/circuitbreaker-io/operator/internal/controller"
)

// Failed reconciles are retried at least every 5 s however many failed at
// once: 10,000 breakers whose status writes failed together, each failing
// again and again, never wait longer (a shared token bucket would make the
// last of them wait about 16 minutes).
func TestRetriesStayWithinFiveSecondsAtScale(t *testing.T) {
	g := NewWithT(t)
	limiter := controller.RetryLimiter()
	const breakers = 10000
	var longest float64
	for round := range 12 {
		for i := range breakers {
			req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "shop", Name: "cb-" + strconv.Itoa(i)}}
			d := limiter.When(req)
			longest = max(longest, d.Seconds())
			g.Expect(d.Seconds()).To(BeNumerically("<=", 5), "breaker %d, failure %d", i, round+1)
		}
	}
	g.Expect(longest).To(BeNumerically("==", 5), "the backoff reaches its cap")
}
