package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// The memory a caller can hold, per call and per connection: what sizes
// the process-wide bounds (Capacity). Run with a count of calls, e.g.
//
//	go test -run '^$' -bench Memory -benchtime 500x ./internal/proxy
//
// go-bytes/op is the proxy process's heap and stacks; sock-bytes/op the
// kernel's TCP buffers (all sockets of the machine, both ends of loopback
// included), which a pod's memory limit counts as well.

// goBytes is the heap and stacks in use after a collection.
func goBytes() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}

// sockBytes is the machine's TCP buffer memory (/proc/net/sockstat, pages).
func sockBytes(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		b.Skip("no /proc/net/sockstat")
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "TCP:" {
			for i := 1; i+1 < len(f); i++ {
				if f[i] == "mem" {
					pages, _ := strconv.ParseInt(f[i+1], 10, 64)
					return pages * int64(os.Getpagesize())
				}
			}
		}
	}
	return 0
}

// memoryFixture serves a proxy on loopback with the data plane's limits
// in front of an upstream that answers size bytes.
func memoryFixture(b *testing.B, size int) (addr string, f *fixture) {
	chunk := bytes.Repeat([]byte("x"), 32<<10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk[:min(len(chunk), size-sent)]); err != nil {
				return
			}
		}
	}))
	b.Cleanup(up.Close)
	t := &testing.T{}
	f = newFixture(t)
	f.add(t, "a", up.URL, breaker.Settings{}, withMaxConcurrent(1<<20), withStreamIdle(time.Hour))
	srv := httptest.NewUnstartedServer(f.proxy.Config.Handler)
	srv.Config = NewServer("", f.proxy.Config.Handler)
	srv.Start()
	b.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), f
}

// settled waits (bounded) until read() stops changing between two looks.
func settled(read func() int64) {
	last := read()
	for range 100 {
		time.Sleep(50 * time.Millisecond)
		now := read()
		if now == last {
			return
		}
		last = now
	}
}

// callers opens b.N connections to addr, each asking for path, and reads
// each answer when read says; Cleanup closes them.
func callers(b *testing.B, addr, path string, read bool) {
	for range b.N {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: p\r\n\r\n"); err != nil {
			b.Fatal(err)
		}
		if !read {
			continue
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// reportMemory reports the memory per op above goBefore and sockBefore.
func reportMemory(b *testing.B, goBefore, sockBefore int64) {
	b.ReportMetric(float64(goBytes()-goBefore)/float64(b.N), "go-bytes/op")
	b.ReportMetric(float64(sockBytes(b)-sockBefore)/float64(b.N), "sock-bytes/op")
}

// BenchmarkMemoryPerHeldCall: callers that ask for an 8 MiB answer and
// never read it, each holding its call until the stream idle timeout.
func BenchmarkMemoryPerHeldCall(b *testing.B) {
	addr, f := memoryFixture(b, 8<<20)
	rt, _ := f.table.get("shop/a")
	goBefore, sockBefore := goBytes(), sockBytes(b)
	callers(b, addr, "/shop/a/big", false)
	settled(func() int64 { return rt.inFlight.Load()*1e12 + sockBytes(b) })
	if held := rt.inFlight.Load(); held != int64(b.N) {
		b.Fatalf("%d calls held, want %d", held, b.N)
	}
	reportMemory(b, goBefore, sockBefore)
}

// BenchmarkMemoryPerIdleConnection: keep-alive callers idle after one
// small call.
func BenchmarkMemoryPerIdleConnection(b *testing.B) {
	addr, _ := memoryFixture(b, 16)
	goBefore, sockBefore := goBytes(), sockBytes(b)
	callers(b, addr, "/shop/a/small", true)
	settled(func() int64 { return sockBytes(b) })
	reportMemory(b, goBefore, sockBefore)
}
