// Command kubectl-cb is the `kubectl cb` plugin: copied onto PATH, kubectl
// runs it for `kubectl cb ...`. See internal/cbctl.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/circuitbreaker-io/operator/internal/cbctl"
)

func main() {
	// An interrupt ends the commands that watch, as their help says.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cbctl.Run(ctx, os.Args[1:], genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	stop()
	os.Exit(code)
}
