package cbctl_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/cbctl"
)

func TestHistory(t *testing.T) {
	ns := newNamespace(t)
	cb := createBreaker(t, ns, "order-api", cbv1.CircuitBreakerSpec{})
	writeStatus(t, ns, "order-api", func(s *cbv1.CircuitBreakerStatus) {
		s.State = cbv1.StateHalfOpen
		s.History = []cbv1.TransitionRecord{
			{Time: metav1.NewMicroTime(at(0)), From: cbv1.StateClosed, To: cbv1.StateOpen,
				Reason: "5 consecutive failures, last: 503", OpenReason: "ConsecutiveFailures"},
			{Time: metav1.NewMicroTime(at(30 * time.Second)), From: cbv1.StateOpen, To: cbv1.StateHalfOpen,
				Reason: "recovery timeout of 30s elapsed"},
		}
	})
	ctx := context.Background()
	regarding := corev1.ObjectReference{APIVersion: "circuitbreaker.io/v1alpha1", Kind: "CircuitBreaker",
		Namespace: ns, Name: "order-api", UID: cb.UID}
	// As the manager writes them: events.k8s.io, a series for repeats.
	_, err := clientset.EventsV1().Events(ns).Create(ctx, &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "order-api.opened"},
		EventTime:  metav1.NewMicroTime(at(10 * time.Millisecond)), Regarding: regarding,
		Type: corev1.EventTypeWarning, Reason: "Opened", Action: "Transition", Note: "5 consecutive failures, last: 503",
		ReportingController: "circuitbreaker.io/operator", ReportingInstance: "manager-a",
	}, metav1.CreateOptions{})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	_, err = clientset.EventsV1().Events(ns).Create(ctx, &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "order-api.halfopened"},
		EventTime:  metav1.NewMicroTime(at(30*time.Second + 5*time.Millisecond)), Regarding: regarding,
		Series: &eventsv1.EventSeries{Count: 2, LastObservedTime: metav1.NewMicroTime(at(31 * time.Second))},
		Type:   corev1.EventTypeNormal, Reason: "HalfOpened", Action: "Transition", Note: "recovery timeout of 30s elapsed",
		ReportingController: "circuitbreaker.io/operator", ReportingInstance: "manager-a",
	}, metav1.CreateOptions{})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	// As older tools write them: the core API, whole-second timestamps.
	_, err = clientset.CoreV1().Events(ns).Create(ctx, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: ns, Name: "order-api.reset"},
		InvolvedObject: regarding, Type: corev1.EventTypeNormal, Reason: "Reset",
		Message:        "breaker reset to Closed by annotation circuitbreaker.io/reset=1",
		FirstTimestamp: metav1.NewTime(at(-time.Minute)), LastTimestamp: metav1.NewTime(at(-time.Minute)), Count: 1,
		Source: corev1.EventSource{Component: "someone"},
	}, metav1.CreateOptions{})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	// Another breaker's Event, and one of an earlier breaker of the same name.
	for name, ref := range map[string]corev1.ObjectReference{
		"other.opened":  {APIVersion: regarding.APIVersion, Kind: regarding.Kind, Namespace: ns, Name: "other", UID: "d0d0d0d0-0000-0000-0000-000000000001"},
		"earlier.event": {APIVersion: regarding.APIVersion, Kind: regarding.Kind, Namespace: ns, Name: "order-api", UID: "d0d0d0d0-0000-0000-0000-000000000002"},
	} {
		_, err = clientset.CoreV1().Events(ns).Create(ctx, &corev1.Event{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, InvolvedObject: ref, Type: corev1.EventTypeWarning,
			Reason: "Opened", Message: "not this breaker's", LastTimestamp: metav1.NewTime(at(0)),
		}, metav1.CreateOptions{})
		NewWithT(t).Expect(err).NotTo(HaveOccurred())
	}

	t.Run("transitions and Events, merged by time", func(t *testing.T) {
		g := NewWithT(t)
		out := kubectlCB("history", "order-api", "-n", ns)
		g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
		lines := strings.Split(strings.TrimSuffix(out.stdout, "\n"), "\n")
		want := []string{
			`^TIME\s+SOURCE\s+FROM\s+TO\s+REASON$`,
			`^2026-12-01T09:59:00\.000Z\s+event\s+-\s+Closed\s+Reset: breaker reset to Closed by annotation circuitbreaker\.io/reset=1$`,
			`^2026-12-01T10:00:00\.000Z\s+status\s+Closed\s+Open\s+5 consecutive failures, last: 503 \[ConsecutiveFailures\]$`,
			`^2026-12-01T10:00:00\.010Z\s+event\s+-\s+Open\s+Opened: 5 consecutive failures, last: 503$`,
			`^2026-12-01T10:00:30\.000Z\s+status\s+Open\s+HalfOpen\s+recovery timeout of 30s elapsed$`,
			`^2026-12-01T10:00:31\.000Z\s+event\s+-\s+HalfOpen\s+HalfOpened: recovery timeout of 30s elapsed \(x2\)$`,
		}
		g.Expect(lines).To(HaveLen(len(want)), out.stdout)
		for i, pattern := range want {
			g.Expect(regexp.MustCompile(pattern).MatchString(lines[i])).To(BeTrue(), "line %d: %q does not match %s", i, lines[i], pattern)
		}
		g.Expect(out.stdout).NotTo(ContainSubstring("not this breaker's"))
	})

	t.Run("a breaker with neither says so", func(t *testing.T) {
		g := NewWithT(t)
		createBreaker(t, ns, "quiet", cbv1.CircuitBreakerSpec{})
		out := kubectlCB("history", "quiet", "-n", ns)
		g.Expect(out.code).To(Equal(cbctl.ExitOK), out.stderr)
		g.Expect(out.stdout).To(BeEmpty())
		g.Expect(out.stderr).To(Equal("CircuitBreaker " + ns + "/quiet has no recorded transitions and no Events.\n"))
	})

	t.Run("an unknown breaker exits 1", func(t *testing.T) {
		g := NewWithT(t)
		out := kubectlCB("history", "nope", "-n", ns)
		g.Expect(out.code).To(Equal(cbctl.ExitError))
		g.Expect(out.stderr).To(Equal(`error: no CircuitBreaker "nope" in namespace "` + ns + `"` + "\n"))
	})
}
