package cbctl

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/cli-runtime/pkg/printers"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
)

// timeLayout prints instants to the millisecond: transitions a few
// milliseconds apart must read in order.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

func newHistoryCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:     "history NAME",
		Short:   "The breaker's recorded transitions (status.history) merged by time with its Events",
		Example: `  kubectl cb history order-api -n shop`,
		Args:    cobra.ExactArgs(1),
		RunE:    func(cmd *cobra.Command, args []string) error { return history(cmd.Context(), o, args[0]) },
	}
}

// historyLine is one row of `kubectl cb history`: a transition from
// status.history ("status") or an Event on the breaker ("event").
type historyLine struct {
	at                       time.Time
	source, from, to, reason string
}

func history(ctx context.Context, o *options, name string) error {
	b, err := o.breaker(ctx, name)
	if err != nil {
		return err
	}
	namespace, cb := b.namespace, b.cb
	core, err := o.coreClient()
	if err != nil {
		return err
	}
	// The manager writes events.k8s.io Events; the core API serves the
	// same objects, with regarding as involvedObject. The UID keeps out
	// the Events of an earlier breaker of the same name.
	events, err := core.Events(namespace).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
		"involvedObject.kind": "CircuitBreaker",
		"involvedObject.name": name,
		"involvedObject.uid":  string(cb.UID),
	}.String()})
	if err != nil {
		return fmt.Errorf("listing the Events of CircuitBreaker %s/%s: %w", namespace, name, err)
	}
	lines := mergeHistory(cb.Status.History, events.Items)
	if len(lines) == 0 {
		_, err := fmt.Fprintf(o.streams.ErrOut, "CircuitBreaker %s/%s has no recorded transitions and no Events.\n", namespace, name)
		return err
	}
	w := printers.GetNewTabWriter(o.streams.Out)
	if err := writeRow(w, []string{"TIME", "SOURCE", "FROM", "TO", "REASON"}); err != nil {
		return err
	}
	for _, l := range lines {
		if err := writeRow(w, []string{l.at.UTC().Format(timeLayout), l.source, l.from, l.to, l.reason}); err != nil {
			return err
		}
	}
	return w.Flush()
}

// mergeHistory orders the transitions and the Events by time; at the same
// instant a transition comes before the Event that announced it.
func mergeHistory(transitions []cbv1.TransitionRecord, events []corev1.Event) []historyLine {
	lines := make([]historyLine, 0, len(transitions)+len(events))
	for _, t := range transitions {
		reason := t.Reason
		if t.OpenReason != "" {
			reason += " [" + t.OpenReason + "]"
		}
		lines = append(lines, historyLine{at: t.Time.Time, source: "status", from: t.From, to: t.To, reason: reason})
	}
	for _, e := range events {
		reason := e.Reason + ": " + e.Message
		if count := eventCount(e); count > 1 {
			reason += fmt.Sprintf(" (x%d)", count)
		}
		lines = append(lines, historyLine{at: eventTime(e), source: "event", from: none, to: eventState(e.Reason), reason: reason})
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].at.Before(lines[j].at) })
	return lines
}

// eventTime is when an Event last happened, whichever API wrote it: a
// series' last observation, else its eventTime (events.k8s.io), else the
// core API's timestamps.
func eventTime(e corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	}
	return e.CreationTimestamp.Time
}

func eventCount(e corev1.Event) int32 {
	if e.Series != nil {
		return e.Series.Count
	}
	return e.Count
}

// eventState is the state an Event's reason says the breaker went to
// (the contract's reasons); "-" for any other reason.
func eventState(reason string) string {
	switch reason {
	case "Opened":
		return cbv1.StateOpen
	case "HalfOpened":
		return cbv1.StateHalfOpen
	case "Closed", "Reset":
		return cbv1.StateClosed
	}
	return none
}
