package cbctl

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
)

// modes are the values of spec.mode, in the order the help lists them.
var modes = []string{cbv1.ModeEnforce, cbv1.ModeObserve, cbv1.ModeForcedOpen, cbv1.ModeDisabled}

func newModeCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "mode NAME [MODE]",
		Short: "Print the breaker's spec.mode, or set it to " + strings.Join(modes, ", "),
		Long: "mode prints spec.mode, or sets it with a merge patch:\n" +
			"  Enforce     rejects calls while the circuit is open (the default)\n" +
			"  Observe     never rejects, and shows what Enforce would do\n" +
			"  ForcedOpen  rejects every call\n" +
			"  Disabled    passes every call and counts nothing",
		Example: `  kubectl cb mode order-api
  kubectl cb mode order-api ForcedOpen -n shop`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				return printMode(cmd.Context(), o, args[0])
			}
			return setMode(cmd.Context(), o, args[0], args[1])
		},
	}
}

func printMode(ctx context.Context, o *options, name string) error {
	b, err := o.breaker(ctx, name)
	if err != nil {
		return err
	}
	cb := b.cb
	_, err = fmt.Fprintln(o.streams.Out, mode(cb))
	return err
}

func setMode(ctx context.Context, o *options, name, newMode string) error {
	// Refused here rather than by the API server's enum, so that the
	// message lists the modes (and the right spelling of a near miss).
	if !slices.Contains(modes, newMode) {
		for _, m := range modes {
			if strings.EqualFold(m, newMode) {
				return fmt.Errorf("unknown mode %q (did you mean %s?): use one of %s", newMode, m, strings.Join(modes, ", "))
			}
		}
		return fmt.Errorf("unknown mode %q: use one of %s", newMode, strings.Join(modes, ", "))
	}
	b, err := o.breaker(ctx, name)
	if err != nil {
		return err
	}
	namespace, client, before := b.namespace, b.client, b.cb
	patch, err := json.Marshal(map[string]any{"spec": map[string]string{"mode": newMode}})
	if err != nil {
		return err
	}
	if _, err := client.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("setting spec.mode of CircuitBreaker %s/%s: %w", namespace, name, err)
	}
	_, err = fmt.Fprintf(o.streams.Out, "circuitbreaker/%s mode set to %s (was %s)\n", name, newMode, mode(before))
	return err
}
