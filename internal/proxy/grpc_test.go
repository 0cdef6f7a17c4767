package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/grpctest"
	"github.com/circuitbreaker-io/operator/internal/metrics"
)

// grpcFixture is a proxy served as the manager serves it (HTTP/1.1 and
// h2c on one port) in front of a real gRPC server, and a real gRPC client
// that reaches breaker shop/orders by its exposed name.
type grpcFixture struct {
	table    *Table
	clock    *clocktesting.FakeClock
	upstream *grpctest.Health
	breaker  *breaker.Breaker
	proxy    string
	client   healthpb.HealthClient
}

func newGRPCFixture(t *testing.T, settings breaker.Settings, opts ...routeOption) *grpcFixture {
	g := NewWithT(t)
	f := &grpcFixture{table: NewTable(metrics.NewBreakers(prometheus.NewRegistry())), clock: clocktesting.NewFakeClock(time.Now()),
		upstream: &grpctest.Health{WatchSends: 2, WatchGap: 300 * time.Millisecond}}

	upl, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(grpctest.Serve(f.upstream, upl))

	f.breaker = breaker.New(settings, f.clock, breaker.Options{})
	key := breaker.NewKey("shop", "orders")
	f.table.Set(key, f.breaker, testRoute(t, "http://"+upl.Addr().String(), append([]routeOption{func(c *RouteConfig) { c.H2C = true }}, opts...)...))
	f.table.Expose(key, "orders-breaker")

	pl, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	srv := NewServer("", New(f.table, f.clock, Options{LoopToken: "test"}))
	go func() { _ = srv.Serve(pl) }()
	t.Cleanup(func() { _ = srv.Close() })
	f.proxy = pl.Addr().String()

	conn, err := grpc.NewClient("passthrough:///"+f.proxy, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("orders-breaker.shop"))
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = conn.Close() })
	f.client = healthpb.NewHealthClient(conn)
	return f
}

func (f *grpcFixture) check(md *metadata.MD) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := []grpc.CallOption{}
	if md != nil {
		opts = append(opts, grpc.Trailer(md)) // a trailers-only answer's metadata
	}
	_, err := f.client.Check(ctx, &healthpb.HealthCheckRequest{}, opts...)
	return err
}

// gRPC calls through the proxy are judged by their grpc-status: NOT_FOUND
// is an answer, UNAVAILABLE a failure; a rejected gRPC caller gets
// UNAVAILABLE with the time until probing, without reaching the upstream.
func TestGRPCThroughTheProxy(t *testing.T) {
	g := NewWithT(t)
	f := newGRPCFixture(t, breaker.Settings{FailureThreshold: 3, RecoveryTimeout: time.Minute})

	g.Expect(f.check(nil)).To(Succeed())

	f.upstream.Code.Store(uint32(codes.NotFound))
	for range 5 {
		g.Expect(status.Code(f.check(nil))).To(Equal(codes.NotFound))
	}
	g.Expect(f.breaker.Snapshot().State).To(Equal(breaker.StateClosed), "NOT_FOUND (404) is not a failure")

	f.upstream.Code.Store(uint32(codes.Unavailable))
	for range 3 {
		g.Expect(status.Code(f.check(nil))).To(Equal(codes.Unavailable))
	}
	g.Expect(f.breaker.Snapshot().State).To(Equal(breaker.StateOpen), "three UNAVAILABLE (503) open it")

	reached := f.upstream.Calls.Load()
	var md metadata.MD
	err := f.check(&md)
	g.Expect(status.Code(err)).To(Equal(codes.Unavailable))
	g.Expect(status.Convert(err).Message()).To(HavePrefix("circuit breaker 'shop/orders' is open: "))
	g.Expect(f.upstream.Calls.Load()).To(Equal(reached), "the upstream was not called")
	g.Expect(md.Get("x-circuit-breaker-state")).To(Equal([]string{"open"}))
	pushback := md.Get("grpc-retry-pushback-ms")
	g.Expect(pushback).To(HaveLen(1))
	ms, _ := strconv.Atoi(pushback[0])
	g.Expect(ms).To(Equal(60000), "the time until probing, on the breaker's clock")

	f.breaker.Reset("test", "reset by the test")
	f.upstream.Code.Store(uint32(codes.OK))
	g.Expect(f.check(nil)).To(Succeed(), "a reset lets calls through again")
}

func TestGRPCVerdicts(t *testing.T) {
	for _, tc := range []struct {
		code    codes.Code
		outcome string // what the breaker counted: failure, success, none
	}{
		{codes.OK, "success"},
		{codes.Canceled, "none"},
		{codes.Unknown, "failure"},
		{codes.InvalidArgument, "success"},
		{codes.DeadlineExceeded, "failure"},
		{codes.NotFound, "success"},
		{codes.PermissionDenied, "success"},
		{codes.ResourceExhausted, "success"},
		{codes.Unimplemented, "failure"},
		{codes.Internal, "failure"},
		{codes.Unavailable, "failure"},
		{codes.DataLoss, "failure"},
		{codes.Unauthenticated, "success"},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			g := NewWithT(t)
			f := newGRPCFixture(t, breaker.Settings{FailureThreshold: 1000})
			f.upstream.Code.Store(uint32(tc.code))
			_ = f.check(nil)
			snap := f.breaker.Snapshot()
			switch tc.outcome {
			case "failure":
				g.Expect(snap.Failures).To(Equal(uint32(1)))
			case "success", "none":
				g.Expect(snap.Failures).To(BeZero())
			}
		})
	}
	t.Run("429 is a failure when failureStatusCodes say so", func(t *testing.T) {
		g := NewWithT(t)
		f := newGRPCFixture(t, breaker.Settings{FailureThreshold: 1000}, withCodes("5xx", "429"))
		f.upstream.Code.Store(uint32(codes.ResourceExhausted))
		_ = f.check(nil)
		g.Expect(f.breaker.Snapshot().Failures).To(Equal(uint32(1)))
	})
}

// A server-streaming call lives as long as it moves, past requestTimeout,
// and is judged when it ends.
func TestGRPCStreamOutlivesTheRequestTimeout(t *testing.T) {
	g := NewWithT(t)
	f := newGRPCFixture(t, breaker.Settings{FailureThreshold: 1}, withTimeout(100*time.Millisecond), withStreamIdle(5*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := f.client.Watch(ctx, &healthpb.HealthCheckRequest{})
	g.Expect(err).NotTo(HaveOccurred())
	for range 2 {
		_, err := stream.Recv()
		g.Expect(err).NotTo(HaveOccurred())
	}
	_, err = stream.Recv()
	g.Expect(err).To(Equal(io.EOF), "the stream ended with OK")
	g.Expect(f.breaker.Snapshot().State).To(Equal(breaker.StateClosed))
}

// The proxy's own answers reach a gRPC caller as gRPC statuses.
func TestGRPCCallersGetGRPCAnswers(t *testing.T) {
	g := NewWithT(t)
	f := newGRPCFixture(t, breaker.Settings{}, withMaxConcurrent(1))
	dial := func(authority string) healthpb.HealthClient {
		conn, err := grpc.NewClient("passthrough:///"+f.proxy, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(authority))
		g.Expect(err).NotTo(HaveOccurred())
		t.Cleanup(func() { _ = conn.Close() })
		return healthpb.NewHealthClient(conn)
	}
	_, err := dial("nothing.here").Check(context.Background(), &healthpb.HealthCheckRequest{})
	g.Expect(status.Code(err)).To(Equal(codes.Unimplemented), "no breaker: %v", err)

	// One Watch holds the only slot; a Check beside it is saturated.
	f.upstream.WatchGap = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := f.client.Watch(ctx, &healthpb.HealthCheckRequest{})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = stream.Recv()
	g.Expect(err).NotTo(HaveOccurred())
	var md metadata.MD
	err = f.check(&md)
	g.Expect(status.Code(err)).To(Equal(codes.ResourceExhausted), "%v", err)
	g.Expect(md.Get("x-circuit-breaker-state")).To(Equal([]string{"saturated"}))
	cancel()
}

// An answer that says it is gRPC and ends without a grpc-status broke the
// protocol: a failure.
func TestGRPCAnswerWithoutStatusIsAFailure(t *testing.T) {
	g := NewWithT(t)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	up := &http.Server{Protocols: &protocols, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		_, _ = w.Write([]byte{0, 0, 0, 0, 0}) // one empty message, then no trailers
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	go func() { _ = up.Serve(l) }()
	t.Cleanup(func() { _ = up.Close() })

	f := newGRPCFixture(t, breaker.Settings{FailureThreshold: 1000})
	f.table.Set(breaker.NewKey("shop", "orders"), f.breaker, testRoute(t, "http://"+l.Addr().String(), func(c *RouteConfig) { c.H2C = true }))
	err = f.check(nil)
	g.Expect(err).To(HaveOccurred())
	snap := f.breaker.Snapshot()
	g.Expect(snap.Failures).To(Equal(uint32(1)))
	g.Expect(snap.LastFailureCause.Kind).To(Equal("gRPC answer without grpc-status"))
}

// The proxy's port speaks HTTP/2 with prior knowledge (h2c) next to
// HTTP/1.1: path routes and Host routes alike.
func TestH2CCallers(t *testing.T) {
	g := NewWithT(t)
	up := newUpstream(t)
	table := NewTable(metrics.NewBreakers(prometheus.NewRegistry()))
	table.Set(breaker.NewKey("shop", "orders"), breaker.New(breaker.Settings{}, clocktesting.NewFakeClock(time.Now()), breaker.Options{}), testRoute(t, up.URL))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	srv := NewServer("", New(table, clocktesting.NewFakeClock(time.Now()), Options{LoopToken: "test"}))
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Transport: &http.Transport{Protocols: &protocols}}
	resp, err := h2c.Get("http://" + l.Addr().String() + "/shop/orders/a")
	g.Expect(err).NotTo(HaveOccurred())
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	g.Expect(resp.Proto).To(Equal("HTTP/2.0"))
	g.Expect(resp.StatusCode).To(Equal(200))
	g.Expect(string(body)).To(Equal("hello from /a"))

	resp, err = http.Get("http://" + l.Addr().String() + "/shop/orders/b")
	g.Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	g.Expect(resp.Proto).To(Equal("HTTP/1.1"))
	g.Expect(resp.StatusCode).To(Equal(200))
}

// What an upstream's grpc-status says, hostile values included, and how
// the proxy's own messages travel in grpc-message.
func TestGRPCStatusAndMessage(t *testing.T) {
	for _, tc := range []struct {
		values []string
		status int
		ok     bool
	}{
		{nil, 0, false},
		{[]string{"0"}, 200, true},
		{[]string{"14"}, 503, true},
		{[]string{"1"}, statusClientClosed, true},
		{[]string{"17"}, 500, true},  // beyond the codes: UNKNOWN's
		{[]string{"-1"}, 500, true},  // likewise
		{[]string{"abc"}, 500, true}, // likewise
		{[]string{"99999999999999999999"}, 500, true},
	} {
		h := http.Header{}
		if tc.values != nil {
			h["Grpc-Status"] = tc.values
		}
		code, ok := grpcAnswerStatus(h)
		NewWithT(t).Expect([]any{code, ok}).To(Equal([]any{tc.status, tc.ok}), "%v", tc.values)
	}
	for in, want := range map[string]string{
		"circuit breaker 'shop/orders' is open": "circuit breaker 'shop/orders' is open",
		"100% down":                             "100%25 down",
		"line\nbreak é":                         "line%0Abreak %C3%A9",
	} {
		NewWithT(t).Expect(grpcMessage(in)).To(Equal(want))
	}
	for ct, want := range map[string]bool{
		"application/grpc": true, "application/grpc+proto": true, "application/grpc;charset=utf-8": true,
		"application/grpc-web": false, "application/grpcx": false, "text/plain": false, "": false,
	} {
		h := http.Header{}
		if ct != "" {
			h.Set("Content-Type", ct)
		}
		NewWithT(t).Expect(isGRPC(h)).To(Equal(want), ct)
	}
}
