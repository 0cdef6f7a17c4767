// Command bench-proxy holds the Go servers of hack/bench-proxy.sh, each run
// as its own process so that a load generator measures them as a caller
// would:
//
//	bench-proxy upstream ADDR          answers every request with 64 bytes
//	bench-proxy bare ADDR TARGET       httputil.ReverseProxy with the proxy's transport and buffer pool, and nothing else
//	bench-proxy cpu PID                prints the process's user+system CPU time in microseconds
package main

import (
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/circuitbreaker-io/operator/hack/procstat"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: bench-proxy upstream ADDR | bare ADDR TARGET | cpu PID")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "upstream":
		body := []byte(strings.Repeat("x", 63) + "\n")
		err = http.ListenAndServe(os.Args[2], http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write(body)
		}))
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
