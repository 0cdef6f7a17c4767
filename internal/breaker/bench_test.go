package breaker

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"k8s.io/utils/clock"
)

// The baseline to beat is sony/gobreaker, measured in the same run.

var errUpstream = errors.New("upstream failed")

func newOpenBreaker() *Breaker {
	b := New(Settings{FailureThreshold: 1, RecoveryTimeout: time.Hour}, clock.RealClock{}, Options{})
	t, _ := b.Allow()
	t.Failure(Failure{StatusCode: 503})
	return b
}

func newOpenGobreaker() *gobreaker.CircuitBreaker[any] {
	cb := gobreaker.NewCircuitBreaker[any](gobreaker.Settings{
		Timeout:     time.Hour,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= 1 },
	})
	_, _ = cb.Execute(func() (any, error) { return nil, errUpstream })
	return cb
}

func BenchmarkClosed(b *testing.B) {
	b.Run("breaker", func(b *testing.B) {
		br := New(Settings{}, clock.RealClock{}, Options{})
		b.ReportAllocs()
		for b.Loop() {
			t, _ := br.Allow()
			t.Success()
		}
	})
	// The rate rules on a window, with the coarse clock the registry
	// gives its breakers: no clock read per call.
	for name, settings := range map[string]Settings{
		"breaker-failure-rate": {Window: 30 * time.Second, MinimumRequests: 20, FailureRateThreshold: 50},
		"breaker-failure-rate-slow": {Window: 30 * time.Second, MinimumRequests: 20, FailureRateThreshold: 50,
			SlowCallDuration: 2 * time.Second, SlowCallRateThreshold: 80},
	} {
		b.Run(name, func(b *testing.B) {
			var coarse atomic.Int64
			coarse.Store(time.Now().UnixNano())
			br := New(settings, clock.RealClock{}, Options{CoarseNow: coarse.Load})
			b.ReportAllocs()
			for b.Loop() {
				t, _ := br.Allow()
				t.Success()
			}
		})
	}
	b.Run("gobreaker-Execute", func(b *testing.B) {
		cb := gobreaker.NewCircuitBreaker[any](gobreaker.Settings{})
		b.ReportAllocs()
		for b.Loop() {
			_, _ = cb.Execute(func() (any, error) { return nil, nil })
		}
	})
	b.Run("gobreaker-TwoStep", func(b *testing.B) {
		cb := gobreaker.NewTwoStepCircuitBreaker[any](gobreaker.Settings{})
		b.ReportAllocs()
		for b.Loop() {
			done, _ := cb.Allow()
			done(nil)
		}
	})
}

func BenchmarkClosedParallel(b *testing.B) {
	b.Run("breaker", func(b *testing.B) {
		br := New(Settings{}, clock.RealClock{}, Options{})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				t, _ := br.Allow()
				t.Success()
			}
		})
	})
	b.Run("gobreaker-Execute", func(b *testing.B) {
		cb := gobreaker.NewCircuitBreaker[any](gobreaker.Settings{})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, _ = cb.Execute(func() (any, error) { return nil, nil })
			}
		})
	})
}

func BenchmarkOpen(b *testing.B) {
	b.Run("breaker", func(b *testing.B) {
		br := newOpenBreaker()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := br.Allow(); err == nil {
				b.Fatal("admitted while open")
			}
		}
	})
	b.Run("gobreaker-Execute", func(b *testing.B) {
		cb := newOpenGobreaker()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := cb.Execute(func() (any, error) { return nil, nil }); err == nil {
				b.Fatal("admitted while open")
			}
		}
	})
}

func BenchmarkOpenParallel(b *testing.B) {
	b.Run("breaker", func(b *testing.B) {
		br := newOpenBreaker()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, _ = br.Allow()
			}
		})
	})
	b.Run("gobreaker-Execute", func(b *testing.B) {
		cb := newOpenGobreaker()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, _ = cb.Execute(func() (any, error) { return nil, nil })
			}
		})
	})
}

// BenchmarkRegistryGet is the lookup the proxy's route table stands for: a
// key sliced out of a request path, among 500 breakers.
func BenchmarkRegistryGet(b *testing.B) {
	r := NewRegistry(clock.RealClock{})
	for i := range 500 {
		r.Upsert(NewKey(fmt.Sprintf("team-%02d", i%20), fmt.Sprintf("svc-%03d", i)), "uid", Settings{}, nil)
	}
	path := "/team-10/svc-250/orders"
	end := len("/team-10/svc-250")
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := r.Get(Key(path[1:end])); !ok {
			b.Fatal("missing")
		}
	}
}
