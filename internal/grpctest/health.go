// Package grpctest is a real gRPC health service for tests and benchmarks:
// it answers the code it is told to and counts the calls that reach it.
package grpctest

import (
	"context"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Health is a grpc.health.v1.Health service. Set WatchSends and WatchGap
// before it serves; Code may change at any time.
type Health struct {
	healthpb.UnimplementedHealthServer
	// Code is what Check answers (codes.OK: SERVING).
	Code atomic.Uint32
	// Calls counts the Checks and Watches that reached it.
	Calls atomic.Int32
	// WatchSends is how many SERVING answers a Watch sends (at least 1),
	// WatchGap apart, before it ends with OK.
	WatchSends int
	WatchGap   time.Duration
}

// Check answers SERVING, or the error Code says.
func (h *Health) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.Calls.Add(1)
	if c := codes.Code(h.Code.Load()); c != codes.OK {
		return nil, status.Error(c, "told to answer "+c.String())
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// Watch streams SERVING WatchSends times, WatchGap apart.
func (h *Health) Watch(_ *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	h.Calls.Add(1)
	for i := range max(1, h.WatchSends) {
		if i > 0 {
			select {
			case <-time.After(h.WatchGap):
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
	}
	return nil
}

// Serve serves h with a gRPC server (which speaks h2c) on l until stop.
func Serve(h *Health, l net.Listener) (stop func()) {
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, h)
	go func() { _ = s.Serve(l) }()
	return s.Stop
}
