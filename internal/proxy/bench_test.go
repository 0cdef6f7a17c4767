package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/metrics"
)

// bareReverseProxy is the baseline: httputil.ReverseProxy with the same
// transport and a pooled buffer, and nothing else.
func bareReverseProxy(target *url.URL) http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
		},
		Transport:  NewTransport(),
		BufferPool: NewBufferPool(),
	}
}

// BenchmarkProxyHop measures a request through each front to the same
// httptest upstream. bare-A and bare-B are identical: their difference is
// the noise. cpu-ns/op is the whole process (client, proxy and upstream),
// so the fronts differ only by what the proxy itself costs.
func BenchmarkProxyHop(b *testing.B) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)

	table := NewTable(metrics.NewBreakers(prometheus.NewRegistry()))
	br := breaker.New(breaker.Settings{}, clock.RealClock{}, breaker.Options{})
	table.Set(breaker.NewKey("bench", "svc"), br, benchRoute(target))
	fronts := []struct {
		name    string
		handler http.Handler
	}{
		{"bare-A", bareReverseProxy(target)},
		{"bare-B", bareReverseProxy(target)},
		{"breaker", New(table, clock.RealClock{}, Options{LoopToken: "bench"})},
	}
	for _, front := range fronts {
		b.Run(front.name, func(b *testing.B) {
			srv := httptest.NewServer(front.handler)
			defer srv.Close()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			reqURL := srv.URL + "/bench/svc/orders?page=2"

			var mu sync.Mutex
			var latencies []time.Duration
			cpuBefore := processCPU()
			start := time.Now()
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				var local []time.Duration
				for pb.Next() {
					t0 := time.Now()
					resp, err := client.Get(reqURL)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
					local = append(local, time.Since(t0))
				}
				mu.Lock()
				latencies = append(latencies, local...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			cpu := processCPU() - cpuBefore
			slices.Sort(latencies)
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
			if len(latencies) > 0 {
				b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}

// BenchmarkHostLookup is the Host lookup every proxied request makes first,
// among 500 exposed breakers, for a Host that names one (in its longest
// form) and for one that names none (a path-routed call).
func BenchmarkHostLookup(b *testing.B) {
	var hosts hostIndex
	for i := range 500 {
		hosts.expose(breaker.NewKey("team-"+string(rune('a'+i%20)), "svc-"+string(rune('a'+i/20))), "svc-"+string(rune('a'+i/20))+"-breaker")
	}
	for name, host := range map[string]string{
		"exposed":     "svc-m-breaker.team-k.svc.cluster.local:8080",
		"not exposed": "circuit-breaker-operator-proxy.circuit-breaker-operator-system:80",
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				hosts.lookup(host, ".svc.cluster.local")
			}
		})
	}
}

// BenchmarkTableGet is the route lookup every proxied request makes, among 500 routes.
func BenchmarkTableGet(b *testing.B) {
	table := NewTable(metrics.NewBreakers(prometheus.NewRegistry()))
	target, _ := url.Parse("http://127.0.0.1:1")
	for i := range 500 {
		key := breaker.NewKey("team-"+string(rune('a'+i%20)), "svc-"+string(rune('a'+i/20)))
		br := breaker.New(breaker.Settings{}, clock.RealClock{}, breaker.Options{})
		table.Set(key, br, benchRoute(target))
	}
	path := "/team-k/svc-m/orders"
	b.Run("lookup", func(b *testing.B) {
		key := breaker.Key(path[1:len("/team-k/svc-m")])
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := table.get(key); !ok {
				b.Fatal("missing")
			}
		}
	})
	b.Run("split+lookup", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			key, _, _ := splitPath(path)
			if _, ok := table.get(key); !ok {
				b.Fatal("missing")
			}
		}
	})
}

// benchRoute is a route with the resource's defaults.
func benchRoute(target *url.URL) RouteConfig {
	codes, _ := ParseStatusCodes([]string{"5xx"})
	return RouteConfig{Target: target, Timeout: 10 * time.Second, StreamIdleTimeout: 5 * time.Minute, MaxConcurrent: 1 << 20, FailureCodes: codes}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
