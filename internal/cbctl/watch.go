package cbctl

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/cli-runtime/pkg/printers"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
)

func newWatchCommand(o *options) *cobra.Command {
	var allNamespaces bool
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print one line per transition of any breaker in the namespace, until interrupted",
		Example: `  kubectl cb watch -n shop
  kubectl cb watch -A`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return watchTransitions(cmd.Context(), o, allNamespaces) },
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "Watch the breakers of every namespace.")
	return cmd
}

// watchTransitions prints the transitions that status.history gains from
// now on. The history holds the last ten, oldest first, so what is new is
// what is later than the newest entry already seen for that breaker.
func watchTransitions(ctx context.Context, o *options, allNamespaces bool) error {
	namespace := ""
	if !allNamespaces {
		var err error
		if namespace, err = o.namespace(); err != nil {
			return err
		}
	}
	client, err := o.breakers(namespace)
	if err != nil {
		return err
	}
	w := printers.GetNewTabWriter(o.streams.Out)
	newest := map[types.UID]time.Time{}
	// seenUpTo notes u's newest transition without printing: the state
	// when the watch starts, or when a breaker is created, is no transition.
	seenUpTo := func(u *unstructured.Unstructured) error {
		cb, err := typed(u)
		if err != nil {
			return err
		}
		for _, t := range cb.Status.History {
			if t.Time.After(newest[cb.UID]) {
				newest[cb.UID] = t.Time.Time
			}
		}
		return nil
	}
	err = followBreakers(ctx, client, "",
		func(breakers []*unstructured.Unstructured) (bool, error) {
			// The header once the breakers are listed: from then on no
			// transition is missed.
			if err := writeRow(w, transitionHeader(breakers, allNamespaces)); err != nil {
				return false, err
			}
			if err := w.Flush(); err != nil {
				return false, err
			}
			for _, u := range breakers {
				if err := seenUpTo(u); err != nil {
					return false, err
				}
			}
			return false, nil
		},
		func(event watch.EventType, u *unstructured.Unstructured) (bool, error) {
			switch event {
			case watch.Added:
				return false, seenUpTo(u)
			case watch.Deleted:
				delete(newest, u.GetUID())
				return false, nil
			}
			cb, err := typed(u)
			if err != nil {
				return false, err
			}
			shown := newest[cb.UID]
			for _, t := range cb.Status.History {
				if !t.Time.After(shown) {
					continue
				}
				if t.Time.After(newest[cb.UID]) {
					newest[cb.UID] = t.Time.Time
				}
				row := []string{t.Time.UTC().Format(timeLayout), cb.Name, t.From, t.To, t.Reason}
				if allNamespaces {
					row = append([]string{row[0], cb.Namespace}, row[1:]...)
				}
				if err := writeRow(w, row); err != nil {
					return false, err
				}
			}
			return false, w.Flush()
		})
	if ctx.Err() != nil {
		return nil // interrupted: what watch is for
	}
	return err
}

// transitionHeader is the header of watch, its cells padded to the widths
// the lines will need: it is printed alone, before any line, and the table
// writer keeps the widths it has seen.
func transitionHeader(breakers []*unstructured.Unstructured, allNamespaces bool) []string {
	nameWidth, namespaceWidth := len("NAME"), len("NAMESPACE")
	for _, u := range breakers {
		nameWidth = max(nameWidth, len(u.GetName()))
		namespaceWidth = max(namespaceWidth, len(u.GetNamespace()))
	}
	stateWidth := len(cbv1.StateHalfOpen)
	cells := []string{pad("TIME", len(time.Time{}.Format(timeLayout))), pad("NAME", nameWidth), pad("FROM", stateWidth), pad("TO", stateWidth), "REASON"}
	if allNamespaces {
		cells = append([]string{cells[0], pad("NAMESPACE", namespaceWidth)}, cells[1:]...)
	}
	return cells
}

func pad(s string, width int) string { return fmt.Sprintf("%-*s", width, s) }
