// Command bench-proxy holds the Go servers of hack/bench-proxy.sh, each run
// as its own process so that a load generator measures them as a caller
// would:
//
//	bench-proxy upstream ADDR          answers every request with 64 bytes
//	bench-proxy testhost FILE          the same upstream on port 8080 of a test host (a network namespace of
//	                                   its own, internal/testhosts; root only), whose address it writes to FILE
//	bench-proxy bare ADDR TARGET       httputil.ReverseProxy with the proxy's transport and buffer pool, and nothing else
//	bench-proxy cpu PID                prints the process's user+system CPU time in microseconds
package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/circuitbreaker-io/operator/hack/procstat"
	"github.com/circuitbreaker-io/operator/internal/proxy"
	"github.com/circuitbreaker-io/operator/internal/testhosts"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: bench-proxy upstream ADDR | testhost FILE | bare ADDR TARGET | cpu PID")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "upstream":
		err = http.ListenAndServe(os.Args[2], upstream)
	case "testhost":
		err = serveTestHost(os.Args[2])
	case "bare":
		target, perr := url.Parse(os.Args[3])
		if perr != nil {
			err = perr
			break
		}
		err = http.ListenAndServe(os.Args[2], &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(target)
				pr.SetXForwarded()
			},
			// The same transport as the manager's proxy.
			Transport:  proxy.NewTransport(),
			BufferPool: proxy.NewBufferPool(),
		})
	case "cpu":
		err = printCPU(os.Args[2])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-proxy:", err)
		os.Exit(1)
	}
}

// upstream answers every request with 64 bytes.
var upstream = func() http.Handler {
	body := []byte(strings.Repeat("x", 63) + "\n")
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(body)
	})
}()

// serveTestHost serves upstream on a test host until a signal, and writes
// its address (host:port) to file once it listens.
func serveTestHost(file string) error {
	hosts, err := testhosts.New(1)
	if err != nil {
		return err
	}
	defer hosts.Close()
	addr := netip.AddrPortFrom(hosts.IPv4(0), 8080)
	l, err := hosts.Listen(addr)
	if err != nil {
		return err
	}
	if err := os.WriteFile(file, []byte(addr.String()), 0o644); err != nil {
		return err
	}
	go func() { _ = http.Serve(l, upstream) }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}

// printCPU prints pid's user+system CPU time in microseconds.
func printCPU(pid string) error {
	n, err := strconv.Atoi(pid)
	if err != nil {
		return err
	}
	cpu, err := procstat.CPU(n)
	if err != nil {
		return err
	}
	fmt.Println(cpu.Microseconds())
	return nil
}
