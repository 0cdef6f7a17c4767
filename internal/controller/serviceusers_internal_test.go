package controller

import (
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// A Service maps to the breakers that name it now: in its own namespace
// only, after a breaker moves to another Service, and not after it is gone.
func TestServiceUsers(t *testing.T) {
	g := NewWithT(t)
	req := func(namespace, name string) reconcile.Request {
		return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: namespace, Name: name}}
	}
	var s serviceUsers
	g.Expect(s.breakers("shop", "orders")).To(BeEmpty(), "the zero value is empty")
	s.set(breaker.NewKey("shop", "a"), "orders")
	s.set(breaker.NewKey("shop", "b"), "orders")
	s.set(breaker.NewKey("blog", "a"), "orders")
	s.set(breaker.NewKey("shop", "c"), "") // a URL upstream
	g.Expect(s.breakers("shop", "orders")).To(ConsistOf(req("shop", "a"), req("shop", "b")))
	g.Expect(s.breakers("blog", "orders")).To(ConsistOf(req("blog", "a")), "a namespace's own")

	s.set(breaker.NewKey("shop", "a"), "orders") // unchanged
	g.Expect(s.breakers("shop", "orders")).To(ConsistOf(req("shop", "a"), req("shop", "b")), "not twice")

	s.set(breaker.NewKey("shop", "a"), "payments") // spec changed
	g.Expect(s.breakers("shop", "orders")).To(ConsistOf(req("shop", "b")))
	g.Expect(s.breakers("shop", "payments")).To(ConsistOf(req("shop", "a")))

	s.set(breaker.NewKey("shop", "b"), "") // deleted, or now a URL upstream
	g.Expect(s.breakers("shop", "orders")).To(BeEmpty())
	g.Expect(s.byService).NotTo(HaveKey(types.NamespacedName{Namespace: "shop", Name: "orders"}), "no empty entry left")
	g.Expect(s.ofBreaker).To(HaveLen(2))
}
