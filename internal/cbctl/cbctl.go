// Package cbctl is the `kubectl cb` plugin: it reads and changes
// CircuitBreakers with nothing but the user's kubeconfig and RBAC, so it
// works wherever `kubectl get cb` does, without reaching the manager.
package cbctl

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/dynamic"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
)

// Exit codes, as cmctl's: a script tells an error from a wait that ran out.
const (
	ExitOK       = 0
	ExitError    = 1
	ExitTimedOut = 124
)

// circuitBreakers is the resource every command reads. The plugin talks to
// it through the dynamic client so that fields newer than this binary's
// types (status.endpoints, say) still reach -o json|yaml and the table.
var circuitBreakers = cbv1.GroupVersion.WithResource("circuitbreakers")

// timedOut is a wait that ran out: exit code 124, and a message saying
// what did not happen.
type timedOut struct{ message string }

func (e *timedOut) Error() string { return e.message }

// Run runs the plugin with args (without the program's name) and returns
// its exit code. Commands that watch run until ctx is cancelled.
func Run(ctx context.Context, args []string, streams genericiooptions.IOStreams) int {
	root := newRootCommand(streams)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	_, _ = fmt.Fprintln(streams.ErrOut, "error:", err)
	var timeout *timedOut
	if errors.As(err, &timeout) {
		return ExitTimedOut
	}
	return ExitError
}

// options is what every command shares: where to connect and where to print.
type options struct {
	config  *genericclioptions.ConfigFlags
	streams genericiooptions.IOStreams
}

func newRootCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &options{config: genericclioptions.NewConfigFlags(true), streams: streams}
	root := &cobra.Command{
		Use:   "kubectl-cb",
		Short: "Inspect, reset and switch CircuitBreakers",
		Long: "kubectl cb reads and changes CircuitBreakers (circuitbreaker.io/v1alpha1) with your kubeconfig and RBAC.\n\n" +
			"Exit codes: 0 done, 1 error, 124 timed out waiting.",
		// Errors are printed once, by Run, as kubectl prints them.
		SilenceErrors: true,
		SilenceUsage:  true,
		Annotations: map[string]string{
			// cobra spells the command "kubectl cb" in help when run as a kubectl plugin.
			cobra.CommandDisplayNameAnnotation: "kubectl cb",
		},
	}
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	o.config.AddFlags(root.PersistentFlags())
	root.AddCommand(newGetCommand(o), newResetCommand(o), newHistoryCommand(o), newWatchCommand(o), newModeCommand(o))
	return root
}

// namespace is the namespace of -n, else of the kubeconfig's context.
func (o *options) namespace() (string, error) {
	ns, _, err := o.config.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", fmt.Errorf("reading the namespace from the kubeconfig: %w", err)
	}
	return ns, nil
}

// coreClient reads Events. It is the core group's client alone: the whole
// clientset would add tens of megabytes of API groups to the binary.
func (o *options) coreClient() (corev1client.CoreV1Interface, error) {
	cfg, err := o.config.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	return corev1client.NewForConfig(cfg)
}

// breakers is the CircuitBreaker client of a namespace ("" for all).
func (o *options) breakers(namespace string) (dynamic.ResourceInterface, error) {
	cfg, err := o.config.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	if namespace == "" {
		return client.Resource(circuitBreakers), nil
	}
	return client.Resource(circuitBreakers).Namespace(namespace), nil
}

// getBreaker reads one breaker, with a message naming it and its namespace when there is none.
func getBreaker(ctx context.Context, client dynamic.ResourceInterface, namespace, name string) (*unstructured.Unstructured, error) {
	u, err := client.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("no CircuitBreaker %q in namespace %q", name, namespace)
	}
	if err != nil {
		return nil, fmt.Errorf("reading CircuitBreaker %s/%s: %w", namespace, name, err)
	}
	return u, nil
}

// namedBreaker is one breaker of the chosen namespace, typed, with the
// namespace and its client for what the command does next.
type namedBreaker struct {
	namespace string
	client    dynamic.ResourceInterface
	cb        *cbv1.CircuitBreaker
}

// breaker reads the breaker called name in the chosen namespace.
func (o *options) breaker(ctx context.Context, name string) (namedBreaker, error) {
	namespace, err := o.namespace()
	if err != nil {
		return namedBreaker{}, err
	}
	client, err := o.breakers(namespace)
	if err != nil {
		return namedBreaker{}, err
	}
	u, err := getBreaker(ctx, client, namespace, name)
	if err != nil {
		return namedBreaker{}, err
	}
	cb, err := typed(u)
	if err != nil {
		return namedBreaker{}, err
	}
	return namedBreaker{namespace: namespace, client: client, cb: cb}, nil
}

// typed is u as the API types see it; fields they do not know are dropped.
func typed(u *unstructured.Unstructured) (*cbv1.CircuitBreaker, error) {
	var cb cbv1.CircuitBreaker
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &cb); err != nil {
		return nil, fmt.Errorf("CircuitBreaker %s/%s does not decode: %w", u.GetNamespace(), u.GetName(), err)
	}
	return &cb, nil
}
