// Command bench-grpc is the gRPC side of make bench-grpc: a gRPC health
// upstream, a bare httputil.ReverseProxy speaking h2c both ways (the
// baseline), and a load generator of unary calls over a few connections.
//
//	bench-grpc upstream ADDR
//	bench-grpc bare ADDR UPSTREAM
//	bench-grpc load ADDR AUTHORITY DURATION CONNECTIONS CONCURRENCY
//
// load prints "calls errors p50-us p99-us".
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/circuitbreaker-io/operator/internal/grpctest"
	"github.com/circuitbreaker-io/operator/internal/proxy"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench-grpc:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: bench-grpc upstream|bare|load ADDR [ARGS]")
	}
	switch args[0] {
	case "upstream":
		l, err := net.Listen("tcp", args[1])
		if err != nil {
			return err
		}
		s := grpc.NewServer()
		healthpb.RegisterHealthServer(s, &grpctest.Health{})
		return s.Serve(l)
	case "bare":
		if len(args) != 3 {
			return fmt.Errorf("usage: bench-grpc bare ADDR UPSTREAM")
		}
		target, err := url.Parse(args[2])
		if err != nil {
			return err
		}
		tr := proxy.NewTransport()
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
		rp := &httputil.ReverseProxy{
			Rewrite:    func(r *httputil.ProxyRequest) { r.SetURL(target); r.SetXForwarded() },
			Transport:  tr,
			BufferPool: proxy.NewBufferPool(),
		}
		// The manager's own server: HTTP/1.1 and h2c, the same bounds.
		return proxy.NewServer(args[1], rp).ListenAndServe()
	case "load":
		if len(args) != 6 {
			return fmt.Errorf("usage: bench-grpc load ADDR AUTHORITY DURATION CONNECTIONS CONCURRENCY")
		}
		d, err := time.ParseDuration(args[3])
		if err != nil {
			return err
		}
		conns, err1 := strconv.Atoi(args[4])
		concurrency, err2 := strconv.Atoi(args[5])
		if err1 != nil || err2 != nil || conns < 1 || concurrency < conns {
			return fmt.Errorf("CONNECTIONS and CONCURRENCY must be numbers, CONCURRENCY >= CONNECTIONS >= 1")
		}
		return load(args[1], args[2], d, conns, concurrency)
	}
	return fmt.Errorf("unknown mode %q", args[0])
}

// load runs concurrency callers over conns connections for d, each making
// unary Checks one after another, and prints the counts and latencies.
func load(addr, authority string, d time.Duration, conns, concurrency int) error {
	clients := make([]healthpb.HealthClient, conns)
	for i := range clients {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if authority != "-" {
			opts = append(opts, grpc.WithAuthority(authority))
		}
		conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
		if err != nil {
			return err
		}
		defer conn.Close()
		clients[i] = healthpb.NewHealthClient(conn)
	}
	deadline := time.Now().Add(d)
	var (
		mu        sync.Mutex
		latencies []time.Duration
		errors    int
		wg        sync.WaitGroup
	)
	for i := range concurrency {
		wg.Go(func() {
			client := clients[i%conns]
			var mine []time.Duration
			failed := 0
			for time.Now().Before(deadline) {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
				cancel()
				if err != nil {
					failed++
					continue
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			errors += failed
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(latencies)
	at := func(q float64) int64 {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[int(q*float64(len(latencies)-1))].Microseconds()
	}
	fmt.Printf("%d %d %d %d\n", len(latencies), errors, at(0.5), at(0.99))
	return nil
}
