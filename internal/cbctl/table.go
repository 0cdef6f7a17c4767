package cbctl

import (
	"fmt"
	"io"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/duration"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
)

// none is what a cell shows when the breaker has no such value.
const none = "-"

var tableHeader = []string{"NAME", "STATE", "MODE", "WHY", "FAILURES", "PROBING IN", "REPLICAS", "ENDPOINTS", "UPSTREAM"}

// tableRow is one breaker's row of `kubectl cb get`, with its namespace
// first when the table spans namespaces.
func tableRow(u *unstructured.Unstructured, withNamespace bool, now time.Time) ([]string, error) {
	cb, err := typed(u)
	if err != nil {
		return nil, err
	}
	row := []string{
		cb.Name,
		orNone(cb.Status.State),
		mode(cb),
		orNone(cb.Status.LastOpenReason),
		failures(cb),
		probingIn(cb, now),
		orNone(cb.Status.OpenReplicas),
		endpoints(u),
		upstream(cb),
	}
	if withNamespace {
		row = append([]string{cb.Namespace}, row...)
	}
	return row, nil
}

// writeRow writes cells as one tab-separated line, for a tabwriter.
func writeRow(w io.Writer, cells []string) error {
	_, err := fmt.Fprintln(w, strings.Join(cells, "\t"))
	return err
}

func header(withNamespace bool) []string {
	if withNamespace {
		return append([]string{"NAMESPACE"}, tableHeader...)
	}
	return tableHeader
}

// mode is spec.mode; an object stored before the field existed has none,
// and behaves as the default.
func mode(cb *cbv1.CircuitBreaker) string {
	if cb.Spec.Mode == "" {
		return cbv1.ModeEnforce
	}
	return cb.Spec.Mode
}

// failures is count/threshold of the consecutive rule ("-" for the
// threshold when failureThreshold 0 turns the rule off), then the rate
// rules' thresholds when set. Cells hold no spaces, so that scripts can
// split a row on whitespace.
func failures(cb *cbv1.CircuitBreaker) string {
	threshold := none
	if cb.Spec.FailureThreshold > 0 {
		threshold = fmt.Sprint(cb.Spec.FailureThreshold)
	}
	cell := fmt.Sprintf("%d/%s", cb.Status.FailureCount, threshold)
	if r := cb.Spec.FailureRate; r != nil {
		cell += fmt.Sprintf(",rate>=%d%%", r.Threshold)
	}
	if s := cb.Spec.SlowCall; s != nil {
		cell += fmt.Sprintf(",slow>=%d%%", s.RateThreshold)
	}
	return cell
}

// probingIn is, while Open, the time left until half-open probes; "now"
// once they are admitted (HalfOpen, or Open past openUntil until the
// manager moves it on).
func probingIn(cb *cbv1.CircuitBreaker, now time.Time) string {
	switch cb.Status.State {
	case cbv1.StateHalfOpen:
		return "now"
	case cbv1.StateOpen:
		if cb.Status.OpenUntil == nil {
			return none
		}
		left := cb.Status.OpenUntil.Sub(now)
		if left <= 0 {
			return "now"
		}
		return duration.HumanDuration(left)
	}
	return none
}

// endpoints is "<usable>/<ready>" from status.endpoints: the ready
// endpoints less those ejected now, of the ready ones. It is read from the
// raw object because the field is newer than some manager versions; "-"
// when the status has none (URL upstreams, or an older manager).
func endpoints(u *unstructured.Unstructured) string {
	ready, found, err := unstructured.NestedInt64(u.Object, "status", "endpoints", "ready")
	if !found || err != nil {
		return none
	}
	ejected, _, _ := unstructured.NestedInt64(u.Object, "status", "endpoints", "ejected")
	return fmt.Sprintf("%d/%d", max(ready-ejected, 0), ready)
}

// upstream is the address the manager forwards to, or, before it has
// written one, what the spec names.
func upstream(cb *cbv1.CircuitBreaker) string {
	switch {
	case cb.Status.Upstream != "":
		return cb.Status.Upstream
	case cb.Spec.Upstream.URL != "":
		return cb.Spec.Upstream.URL
	case cb.Spec.Upstream.Service != nil:
		return fmt.Sprintf("service/%s:%s", cb.Spec.Upstream.Service.Name, cb.Spec.Upstream.Service.Port.String())
	}
	return none
}

func orNone(s string) string {
	if s == "" {
		return none
	}
	return s
}
