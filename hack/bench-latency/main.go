// Command bench-latency is the open-loop load generator of
// hack/bench-latency.sh: it sends GET requests to one URL at a fixed rate
// over a fixed number of keep-alive HTTP/1.1 connections, and times each
// from its scheduled send time to the end of its answer's body.
//
//	bench-latency [-rate 1000] [-connections 10] [-duration 10s] [-warmup 1s] [-timeout 2s] [-count N] URL
//
// Request i is due at start + i/rate, on connection i mod connections
// (round robin by schedule). Each connection is a worker of its own, a raw
// client over a net.Conn (the request's bytes written as they are, the
// answer read with http.ReadResponse on the connection's bufio.Reader),
// which waits until its next request is due. A connection still busy when
// its next request is due sends it late, and the lateness is in that
// request's latency: when a request is sent does not depend on how fast
// the server answered the ones before (no coordinated omission).
//
// The run is bounded: at most rate×duration requests (fewer with -count);
// none is sent later than duration+timeout after the start (those left
// count as errors); each waits at most -timeout for its answer. A warm-up
// at the same rate on the same connections precedes the measured schedule
// and is discarded.
//
// It prints one line, latencies in milliseconds, exact percentiles (nearest
// rank) of every answered request's latency, from all samples sorted:
//
//	count=10000 errors=0 p50=0.210 p90=0.254 p99=0.398 max=1.862
//
// Errors (no answer within the timeout, an answer other than 200, not sent
// in time) are counted, not timed; the first is printed on stderr.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	rate := flag.Float64("rate", 1000, "requests per second, over all connections")
	connections := flag.Int("connections", 10, "keep-alive connections, each a worker")
	duration := flag.Duration("duration", 10*time.Second, "length of the measured schedule")
	warmup := flag.Duration("warmup", time.Second, "length of the discarded schedule before it, on the same connections")
	timeout := flag.Duration("timeout", 2*time.Second, "longest wait for one answer (and for a dial)")
	count := flag.Int("count", 0, "at most this many measured requests (0: rate×duration)")
	flag.Parse()
	if flag.NArg() != 1 || *rate <= 0 || *connections <= 0 || *duration <= 0 || *timeout <= 0 {
		fmt.Fprintln(os.Stderr, "usage: bench-latency [-rate R] [-connections C] [-duration D] [-warmup W] [-timeout T] [-count N] URL")
		os.Exit(2)
	}
	g, err := newGenerator(flag.Arg(0), *connections, *timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-latency:", err)
		os.Exit(1)
	}
	if *warmup > 0 {
		g.run(*rate, *warmup, 0)
	}
	r := g.run(*rate, *duration, *count)
	g.close()
	if r.firstErr != nil {
		fmt.Fprintf(os.Stderr, "bench-latency: %d errors, the first: %v\n", r.errors, r.firstErr)
	}
	fmt.Println(r)
}

// generator holds the workers sending to one server.
type generator struct {
	addr    string
	request []byte // the whole request, written as is
	timeout time.Duration
	workers []*worker
}

// worker is one keep-alive connection (nc nil after an error, dialled
// again for its next request) and the timer it waits on.
type worker struct {
	nc    net.Conn
	br    *bufio.Reader
	timer *timer
}

func newGenerator(rawURL string, connections int, timeout time.Duration) (*generator, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" || u.Port() == "" {
		return nil, fmt.Errorf("%s: want http://host:port/path", rawURL)
	}
	g := &generator{
		addr:    u.Host,
		request: fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench-latency\r\n\r\n", u.RequestURI(), u.Host),
		timeout: timeout,
	}
	// Every connection is dialled before the schedule starts: a handshake
	// is in no request's latency, but after an error.
	for range connections {
		w := &worker{}
		g.workers = append(g.workers, w)
		if w.timer, err = newTimer(); err != nil {
			g.close()
			return nil, err
		}
		if err := g.dial(w); err != nil {
			g.close()
			return nil, err
		}
	}
	return g, nil
}

func (g *generator) dial(w *worker) error {
	nc, err := net.DialTimeout("tcp", g.addr, g.timeout)
	if err != nil {
		return err
	}
	w.nc, w.br = nc, bufio.NewReader(nc)
	return nil
}

func (g *generator) close() {
	for _, w := range g.workers {
		if w.nc != nil {
			_ = w.nc.Close()
		}
		if w.timer != nil {
			_ = w.timer.f.Close()
		}
	}
}

// result is one schedule's outcome.
type result struct {
	samples  []time.Duration // of the answered requests, sorted
	errors   int
	firstErr error
}

// String is the line bench-latency prints.
func (r result) String() string {
	s := fmt.Sprintf("count=%d errors=%d", len(r.samples), r.errors)
	if len(r.samples) == 0 {
		return s + " p50=NaN p90=NaN p99=NaN max=NaN"
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return s + fmt.Sprintf(" p50=%.3f p90=%.3f p99=%.3f max=%.3f",
		ms(r.percentile(50)), ms(r.percentile(90)), ms(r.percentile(99)), ms(r.samples[len(r.samples)-1]))
}

// percentile is the nearest-rank p-th percentile of the sorted samples:
// the smallest sample that at least p% of them are at most.
func (r result) percentile(p int) time.Duration {
	rank := (len(r.samples)*p + 99) / 100 // ceil(n·p/100)
	return r.samples[max(rank, 1)-1]
}

func (r *result) fail(err error) {
	r.errors++
	if r.firstErr == nil {
		r.firstErr = err
	}
}

// run sends rate×d requests (at most limit when limit > 0), request i due
// at start + i/rate on worker i mod len(g.workers), and waits for every
// worker to finish.
func (g *generator) run(rate float64, d time.Duration, limit int) result {
	n := int(rate * d.Seconds())
	if limit > 0 {
		n = min(n, limit)
	}
	start := time.Now().Add(10 * time.Millisecond)
	due := func(i int) time.Time { return start.Add(time.Duration(float64(i) * float64(time.Second) / rate)) }
	stop := start.Add(d + g.timeout) // nothing is sent after it
	results := make([]result, len(g.workers))
	var wg sync.WaitGroup
	for k, w := range g.workers {
		wg.Go(func() {
			r := &results[k]
			r.samples = make([]time.Duration, 0, n/len(g.workers)+1)
			for i := k; i < n; i += len(g.workers) {
				at := due(i)
				if time.Now().After(stop) {
					r.fail(fmt.Errorf("request %d, due at +%v, not sent by +%v", i, at.Sub(start), stop.Sub(start)))
					continue
				}
				if err := w.timer.sleepUntil(at); err != nil {
					r.fail(err)
					continue
				}
				if err := g.do(w); err != nil {
					r.fail(err)
					continue
				}
				r.samples = append(r.samples, time.Since(at))
			}
		})
	}
	wg.Wait()
	all := result{samples: make([]time.Duration, 0, n)}
	for _, r := range results {
		all.samples = append(all.samples, r.samples...)
		all.errors += r.errors
		if all.firstErr == nil {
			all.firstErr = r.firstErr
		}
	}
	slices.Sort(all.samples)
	return all
}

// do sends one request on w's connection and reads its whole answer; after
// an error, or an answer that closes the connection, the connection is
// closed and dialled again for the next request.
func (g *generator) do(w *worker) (err error) {
	if w.nc == nil {
		if err := g.dial(w); err != nil {
			return err
		}
	}
	reuse := false
	defer func() {
		if !reuse {
			_ = w.nc.Close()
			w.nc = nil
		}
	}()
	if err := w.nc.SetDeadline(time.Now().Add(g.timeout)); err != nil {
		return err
	}
	if _, err := w.nc.Write(g.request); err != nil {
		return err
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return err
	}
	reuse = !resp.Close
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// timer is a timerfd in the runtime's network poller. A goroutine waiting
// on it wakes when the kernel's high-resolution timer fires; one in
// time.Sleep waits for the poller's epoll_pwait, whose timeout is in whole
// milliseconds, and wakes up to 1 ms late on an idle process (measured
// here: 0.7 ms late at the median), which would be in every latency. A
// thread blocked in nanosleep(2) instead would hold its P until the
// runtime takes it back, delaying the other workers' answers.
type timer struct {
	fd int
	f  *os.File // fd, non-blocking, so that reading it parks the goroutine in the poller
}

func newTimer() (*timer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	return &timer{fd: fd, f: os.NewFile(uintptr(fd), "timerfd")}, nil
}

// sleepUntil returns at t or just after it; at once if t has passed.
func (t *timer) sleepUntil(at time.Time) error {
	var expirations [8]byte
	for {
		d := time.Until(at)
		if d <= 0 {
			return nil
		}
		spec := unix.ItimerSpec{Value: unix.NsecToTimespec(d.Nanoseconds())}
		if err := unix.TimerfdSettime(t.fd, 0, &spec, nil); err != nil {
			return fmt.Errorf("timerfd_settime: %w", err)
		}
		if _, err := t.f.Read(expirations[:]); err != nil {
			return fmt.Errorf("timerfd read: %w", err)
		}
	}
}
