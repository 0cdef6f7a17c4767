package cbctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/printers"
	"k8s.io/client-go/dynamic"
)

type getOptions struct {
	*options
	allNamespaces bool
	watch         bool
	output        string
	printFlags    *genericclioptions.JSONYamlPrintFlags
}

func newGetCommand(o *options) *cobra.Command {
	g := &getOptions{options: o, printFlags: genericclioptions.NewJSONYamlPrintFlags()}
	cmd := &cobra.Command{
		Use:   "get [NAME]",
		Short: "Show breakers: state, mode, why they opened, failures, time until probing, replicas, endpoints, upstream",
		Example: `  kubectl cb get
  kubectl cb get order-api -n shop -o yaml
  kubectl cb get -A -w`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			return g.run(cmd.Context(), name)
		},
	}
	cmd.Flags().BoolVarP(&g.allNamespaces, "all-namespaces", "A", false, "List the breakers of every namespace.")
	cmd.Flags().BoolVarP(&g.watch, "watch", "w", false, "After listing, print each change until interrupted.")
	cmd.Flags().StringVarP(&g.output, "output", "o", "", "Output format: json or yaml (default: a table).")
	g.printFlags.AddFlags(cmd)
	return cmd
}

// objectPrinter prints objects for -o; nil means the table.
func (g *getOptions) objectPrinter() (printers.ResourcePrinter, error) {
	if g.output == "" {
		return nil, nil
	}
	return g.printFlags.ToPrinter(g.output)
}

func (g *getOptions) run(ctx context.Context, name string) error {
	printer, err := g.objectPrinter()
	if err != nil {
		return err
	}
	if name != "" && g.allNamespaces {
		return errors.New("a breaker is named within one namespace: use -n with NAME, not -A")
	}
	namespace := ""
	if !g.allNamespaces {
		if namespace, err = g.namespace(); err != nil {
			return err
		}
	}
	client, err := g.breakers(namespace)
	if err != nil {
		return err
	}
	table := newTablePrinter(g.streams.Out, g.allNamespaces)
	if g.watch {
		return g.follow(ctx, client, name, namespace, printer, table)
	}
	if name != "" {
		u, err := getBreaker(ctx, client, namespace, name)
		if err != nil {
			return err
		}
		if printer != nil {
			return printer.PrintObj(u, g.streams.Out)
		}
		return table.print(u)
	}
	list, err := client.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing CircuitBreakers: %w", err)
	}
	if printer != nil {
		return printer.PrintObj(list, g.streams.Out)
	}
	if len(list.Items) == 0 {
		g.noneFound(namespace)
		return nil
	}
	items := make([]*unstructured.Unstructured, len(list.Items))
	for i := range list.Items {
		items[i] = &list.Items[i]
	}
	return table.print(items...)
}

// follow is -w: the breakers as they are, then each change, until interrupted.
func (g *getOptions) follow(ctx context.Context, client dynamic.ResourceInterface, name, namespace string,
	printer printers.ResourcePrinter, table *tablePrinter,
) error {
	if name != "" {
		// An unknown name is an error now, not a silent wait.
		if _, err := getBreaker(ctx, client, namespace, name); err != nil {
			return err
		}
	}
	show := func(breakers ...*unstructured.Unstructured) error {
		if printer == nil {
			return table.print(breakers...)
		}
		for _, u := range breakers {
			if err := printer.PrintObj(u, g.streams.Out); err != nil {
				return err
			}
		}
		return nil
	}
	err := followBreakers(ctx, client, name,
		func(breakers []*unstructured.Unstructured) (bool, error) {
			if len(breakers) == 0 && printer == nil {
				g.noneFound(namespace)
			}
			return false, show(breakers...)
		},
		func(_ watch.EventType, u *unstructured.Unstructured) (bool, error) {
			return false, show(u)
		})
	if ctx.Err() != nil {
		return nil // interrupted: what -w is for
	}
	return err
}

func (g *getOptions) noneFound(namespace string) {
	if namespace == "" {
		_, _ = fmt.Fprintln(g.streams.ErrOut, "No CircuitBreakers found.")
		return
	}
	_, _ = fmt.Fprintf(g.streams.ErrOut, "No CircuitBreakers found in namespace %s.\n", namespace)
}

// tablePrinter prints breakers as rows under one header, written once;
// columns keep the widths they had, so rows printed later by -w line up.
type tablePrinter struct {
	withNamespace bool
	headerDone    bool
	writer        interface {
		io.Writer
		Flush() error
	}
}

func newTablePrinter(out io.Writer, withNamespace bool) *tablePrinter {
	return &tablePrinter{withNamespace: withNamespace, writer: printers.GetNewTabWriter(out)}
}

func (t *tablePrinter) print(breakers ...*unstructured.Unstructured) error {
	if len(breakers) == 0 {
		return nil
	}
	if !t.headerDone {
		if err := writeRow(t.writer, header(t.withNamespace)); err != nil {
			return err
		}
		t.headerDone = true
	}
	now := time.Now()
	for _, u := range breakers {
		row, err := tableRow(u, t.withNamespace, now)
		if err != nil {
			return err
		}
		if err := writeRow(t.writer, row); err != nil {
			return err
		}
	}
	return t.writer.Flush()
}
