package cbctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
)

type resetOptions struct {
	*options
	timeout time.Duration
	wait    bool
}

func newResetCommand(o *options) *cobra.Command {
	r := &resetOptions{options: o}
	cmd := &cobra.Command{
		Use:   "reset NAME",
		Short: "Reset a breaker to Closed and wait until the manager has done it",
		Long: "reset sets the " + cbv1.ResetAnnotation + " annotation to a fresh value and waits until the manager " +
			"records it in status.lastHandledReset, then prints the breaker's new state.\n\n" +
			"Exit codes: 0 reset, 1 error, 124 the manager did not handle it within --timeout.",
		Example: `  kubectl cb reset order-api -n shop
  kubectl cb reset order-api --timeout 2m
  kubectl cb reset order-api --wait=false`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return r.run(cmd.Context(), args[0]) },
	}
	cmd.Flags().DurationVar(&r.timeout, "timeout", 30*time.Second, "How long to wait for the manager to handle the reset.")
	cmd.Flags().BoolVar(&r.wait, "wait", true, "Wait until status.lastHandledReset equals the new value.")
	return cmd
}

func (r *resetOptions) run(ctx context.Context, name string) error {
	if r.wait && r.timeout <= 0 {
		return fmt.Errorf("--timeout must be greater than 0, not %s", r.timeout)
	}
	namespace, err := r.namespace()
	if err != nil {
		return err
	}
	client, err := r.breakers(namespace)
	if err != nil {
		return err
	}
	// Reading first gives an unknown name its own message, rather than a
	// merge patch's not-found error.
	if _, err := getBreaker(ctx, client, namespace, name); err != nil {
		return err
	}
	// A new value each time: the manager acts on each value once. The
	// nanoseconds are what the README's `date +%s%N` gives.
	token := strconv.FormatInt(time.Now().UnixNano(), 10)
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{cbv1.ResetAnnotation: token}}})
	if err != nil {
		return err
	}
	if _, err := client.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("setting %s on CircuitBreaker %s/%s: %w", cbv1.ResetAnnotation, namespace, name, err)
	}
	if !r.wait {
		_, err := fmt.Fprintf(r.streams.Out, "circuitbreaker/%s reset requested (%s=%s); not waiting for the manager\n",
			name, cbv1.ResetAnnotation, token)
		return err
	}
	handled, err := r.waitForReset(ctx, client, namespace, name, token)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(r.streams.Out, "circuitbreaker/%s reset (%s=%s)\n", name, cbv1.ResetAnnotation, token); err != nil {
		return err
	}
	return newTablePrinter(r.streams.Out, false).print(handled)
}

// waitForReset waits until status.lastHandledReset is token, and returns
// the breaker as it is then.
func (r *resetOptions) waitForReset(ctx context.Context, client dynamic.ResourceInterface, namespace, name, token string) (*unstructured.Unstructured, error) {
	waitCtx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var handled *unstructured.Unstructured
	isHandled := func(u *unstructured.Unstructured) bool {
		got, _, _ := unstructured.NestedString(u.Object, "status", "lastHandledReset")
		if got == token {
			handled = u
		}
		return handled != nil
	}
	err := followBreakers(waitCtx, client, name,
		func(breakers []*unstructured.Unstructured) (bool, error) {
			if len(breakers) == 0 {
				return false, fmt.Errorf("CircuitBreaker %s/%s was deleted before the manager handled the reset", namespace, name)
			}
			return isHandled(breakers[0]), nil
		},
		func(event watch.EventType, u *unstructured.Unstructured) (bool, error) {
			if event == watch.Deleted {
				return false, fmt.Errorf("CircuitBreaker %s/%s was deleted before the manager handled the reset", namespace, name)
			}
			return isHandled(u), nil
		})
	switch {
	case err == nil:
		return handled, nil
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return nil, r.notHandled(ctx, client, name, token)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("interrupted: the reset annotation was set (%s=%s) but the manager had not handled it yet",
			cbv1.ResetAnnotation, token)
	}
	return nil, err
}

// notHandled says what did not happen, and the likeliest why: a breaker
// the manager refuses (Ready=False) says so in its condition; otherwise
// nobody is handling breakers.
func (r *resetOptions) notHandled(ctx context.Context, client dynamic.ResourceInterface, name, token string) error {
	message := fmt.Sprintf("the reset annotation was set (%s=%s) but status.lastHandledReset did not reach it within %s",
		cbv1.ResetAnnotation, token, r.timeout)
	u, err := client.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return &timedOut{message: message + ": is the manager running?"}
	}
	cb, err := typed(u)
	if err != nil {
		return &timedOut{message: message + ": is the manager running?"}
	}
	if ready := meta.FindStatusCondition(cb.Status.Conditions, cbv1.ConditionReady); ready != nil && ready.Status == metav1.ConditionFalse {
		return &timedOut{message: fmt.Sprintf("%s: the breaker is not Ready (%s: %s)", message, ready.Reason, ready.Message)}
	}
	if cb.Status.LastHandledReset != "" {
		message += fmt.Sprintf(" (it is still %q)", cb.Status.LastHandledReset)
	}
	return &timedOut{message: message + ": is the manager running?"}
}
