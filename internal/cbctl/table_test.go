package cbctl

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
)

// The CRD of this version has no status.endpoints, so the API server
// prunes it: the column is checked on objects built here, as a manager
// that writes the field would store them.
func TestEndpointsColumn(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status map[string]any
		want   string
	}{
		{"usable of ready", map[string]any{"endpoints": map[string]any{"ready": int64(3), "ejected": int64(1)}}, "2/3"},
		{"none ejected", map[string]any{"endpoints": map[string]any{"ready": int64(2)}}, "2/2"},
		{"no ready endpoint", map[string]any{"endpoints": map[string]any{"ready": int64(0)}}, "0/0"},
		{"a URL upstream has none", map[string]any{"state": "Closed"}, "-"},
		{"no status yet", nil, "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "circuitbreaker.io/v1alpha1", "kind": "CircuitBreaker",
				"metadata": map[string]any{"name": "order-api", "namespace": "shop"}}}
			if tc.status != nil {
				u.Object["status"] = tc.status
			}
			g.Expect(endpoints(u)).To(Equal(tc.want))
			row, err := tableRow(u, false, time.Now())
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(row[7]).To(Equal(tc.want), "the ENDPOINTS column of the row")
		})
	}
}

func TestProbingIn(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		state     string
		openUntil time.Time
		want      string
	}{
		{"open: the time left", cbv1.StateOpen, now.Add(90 * time.Second), "90s"},
		{"open a long time", cbv1.StateOpen, now.Add(3 * time.Hour), "3h"},
		{"open past its time: probes are due", cbv1.StateOpen, now.Add(-time.Second), "now"},
		{"half-open: probing", cbv1.StateHalfOpen, time.Time{}, "now"},
		{"closed", cbv1.StateClosed, time.Time{}, "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cb := &cbv1.CircuitBreaker{Status: cbv1.CircuitBreakerStatus{State: tc.state}}
			if !tc.openUntil.IsZero() {
				cb.Status.OpenUntil = &metav1.Time{Time: tc.openUntil}
			}
			NewWithT(t).Expect(probingIn(cb, now)).To(Equal(tc.want))
		})
	}
}
