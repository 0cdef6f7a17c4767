//go:build faults

package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// loadWorkers is how many keep-alive clients share a load's calls, each
// with its own connection.
const loadWorkers = 8

// failure is a call that got no answer on a connection that was made.
type failure struct {
	at     time.Time
	reused bool
	err    string
}

// loadResult is what a load loop saw, counted by outcome.
type loadResult struct {
	mu       sync.Mutex
	statuses map[int]int
	// refused counts calls whose new connection was refused or reset
	// while connecting: nothing was accepted. firstRefused is when the
	// first was.
	refused      int
	firstRefused time.Time
	// failed counts calls that got no answer otherwise (a reset or EOF
	// once connected, a timeout); failures says what each was.
	failed   int
	failures []failure
	errs     []string
	// toldClose counts answers that carried Connection: close.
	toldClose int
	latencies []time.Duration
	skipped   int
	// done counts finished calls, for a test to wait on.
	done atomic.Int64
}

func (r *loadResult) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.refused + r.failed
	for _, count := range r.statuses {
		n += count
	}
	return n
}

// fivexx is how many answers had a 5xx status.
func (r *loadResult) fivexx() int {
	n := 0
	for status, count := range r.statuses {
		if status >= 500 {
			n += count
		}
	}
	return n
}

func (r *loadResult) String() string {
	return fmt.Sprintf("%d calls (%v by status), %d refused, %d unanswered, %d told Connection: close", r.calls(), r.statuses, r.refused, r.failed, r.toldClose)
}

// startLoad GETs url at rate calls a second from loadWorkers keep-alive
// clients, in the background, until rate × limit calls were sent, limit
// passed or ctx ended; wait returns the result once every call is done. A
// tick that finds every worker busy is skipped (and counted), so the loop
// never queues more than the workers hold.
func startLoad(ctx context.Context, url string, rate int, limit time.Duration) (r *loadResult, wait func() *loadResult) {
	r = &loadResult{statuses: map[int]int{}}
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		r.run(ctx, url, rate, limit)
	}()
	return r, func() *loadResult { <-finished; return r }
}

func (r *loadResult) run(ctx context.Context, url string, rate int, limit time.Duration) {
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range loadWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer c.CloseIdleConnections()
			for range jobs {
				r.call(c, url)
			}
		}()
	}
	total := int(float64(rate) * limit.Seconds())
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for range total {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			break
		}
		select {
		case jobs <- struct{}{}:
		default:
			r.mu.Lock()
			r.skipped++
			r.mu.Unlock()
		}
	}
	close(jobs)
	wg.Wait()
}

func (r *loadResult) call(c *http.Client, url string) {
	defer r.done.Add(1)
	start := time.Now()
	var reused bool
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
	}), http.MethodGet, url, nil)
	if err != nil {
		panic(err)
	}
	resp, err := c.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	took := time.Since(start)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil && (errors.Is(err, syscall.ECONNREFUSED) || isDial(err)):
		if r.refused == 0 {
			r.firstRefused = start
		}
		r.refused++
	case err != nil:
		r.failed++
		r.failures = append(r.failures, failure{at: start, reused: reused, err: err.Error()})
		if len(r.errs) < 5 {
			r.errs = append(r.errs, fmt.Sprintf("%s (at %s, on a reused connection: %v)", err, start.Format("15:04:05.000"), reused))
		}
	default:
		r.statuses[resp.StatusCode]++
		if resp.Close {
			r.toldClose++
		}
		r.latencies = append(r.latencies, took)
	}
}

// isDial tells whether err happened while connecting.
func isDial(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// percentile is the p-th percentile (0 < p ≤ 100) of durations, nearest rank.
func percentile(durations []time.Duration, p float64) time.Duration {
	if len(durations) == 0 {
		return 0
	}
	sorted := slices.Clone(durations)
	slices.Sort(sorted)
	rank := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}
