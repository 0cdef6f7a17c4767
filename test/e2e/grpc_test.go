//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/circuitbreaker-io/operator/internal/grpctest"
)

// grpcStep drives the real manager with a real gRPC client and server: the
// client reaches the breaker by its exposed Service's name (the
// :authority), as a caller in the cluster would after changing only its
// hostname.
func grpcStep(t *testing.T, g Gomega, c *cluster) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	up := &grpctest.Health{WatchSends: 3, WatchGap: time.Second} // a stream of 2 s: longer than requestTimeout
	defer grpctest.Serve(up, l)()

	c.kubectlApply(t, fmt.Sprintf(`apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: health, namespace: default}
spec:
  upstream: {url: "http://%s", protocol: h2c}
  expose: {}
  failureThreshold: 3
  recoveryTimeout: 1h
  requestTimeout: 500ms
`, l.Addr()))
	defer c.kubectlQuiet("delete", "cb", "health")
	g.Eventually(func() string {
		return c.kubectlQuiet("get", "cb", "health", "-o", "jsonpath={.status.exposedAs}")
	}, 10*time.Second, 100*time.Millisecond).Should(Equal("health-breaker.default.svc.cluster.local"))
	g.Expect(c.kubectl(g, "get", "cb", "health", "-o", "wide")).To(ContainSubstring("health-breaker.default.svc.cluster.local"))
	g.Expect(c.kubectl(g, "get", "service", "health-breaker", "-o", "jsonpath={.spec.type} {.spec.externalName}")).To(
		Equal("ExternalName circuit-breaker-operator-proxy." + operatorNamespace + ".svc.cluster.local"))

	conn, err := grpc.NewClient("passthrough:///"+c.proxyAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("health-breaker.default"))
	g.Expect(err).NotTo(HaveOccurred())
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	check := func(trailer *metadata.MD) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Trailer(trailer))
		return err
	}
	var md metadata.MD
	g.Eventually(func() error { return check(&md) }, 10*time.Second, 100*time.Millisecond).Should(Succeed(), "unary Checks pass")

	up.Code.Store(uint32(codes.NotFound))
	for range 5 {
		g.Expect(status.Code(check(&md))).To(Equal(codes.NotFound))
	}
	g.Expect(c.kubectlQuiet("get", "cb", "health", "-o", "jsonpath={.status.state}")).To(Equal("Closed"), "NOT_FOUND is an answer")

	up.Code.Store(uint32(codes.Unavailable))
	for range 3 {
		g.Expect(status.Code(check(&md))).To(Equal(codes.Unavailable))
	}
	reached := up.Calls.Load()
	err = check(&md)
	g.Expect(status.Code(err)).To(Equal(codes.Unavailable), "rejected")
	g.Expect(up.Calls.Load()).To(Equal(reached), "without reaching the upstream")
	g.Expect(md.Get("x-circuit-breaker-state")).To(Equal([]string{"open"}))
	pushback := md.Get("grpc-retry-pushback-ms")
	g.Expect(pushback).To(HaveLen(1))
	g.Expect(strconv.Atoi(pushback[0])).To(BeNumerically(">", 0))
	g.Eventually(func() string { return c.kubectlQuiet("get", "cb", "health", "-o", "jsonpath={.status.state}") },
		5*time.Second, 100*time.Millisecond).Should(Equal("Open"))
	t.Logf("rejected gRPC call: %v, grpc-retry-pushback-ms %s", err, pushback[0])

	up.Code.Store(uint32(codes.OK))
	c.kubectl(g, "annotate", "cb", "health", "circuitbreaker.io/reset=grpc", "--overwrite")
	g.Eventually(func() error { return check(&md) }, 10*time.Second, 100*time.Millisecond).Should(Succeed(), "a reset lets calls through")

	// A server-streaming call outlives requestTimeout (500ms): 2 s.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
	g.Expect(err).NotTo(HaveOccurred())
	start := time.Now()
	for range 3 {
		_, err := stream.Recv()
		g.Expect(err).NotTo(HaveOccurred())
	}
	_, err = stream.Recv()
	g.Expect(err).To(Equal(io.EOF), "the stream ends with OK")
	t.Logf("server stream through the proxy lasted %v", time.Since(start))
	g.Expect(c.kubectlQuiet("get", "cb", "health", "-o", "jsonpath={.status.state}")).To(Equal("Closed"))

	// curl speaks HTTP/2 with prior knowledge to the proxy's port.
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Log("no curl: the h2c check by curl is skipped (the proxy tests cover h2c callers)")
		return
	}
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer web.Close()
	c.kubectlApply(t, fmt.Sprintf(`apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: h2web, namespace: default}
spec: {upstream: {url: %q}}
`, web.URL))
	defer c.kubectlQuiet("delete", "cb", "h2web")
	g.Eventually(func() string {
		out, _ := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "HTTP/%{http_version} %{http_code}", "--http2-prior-knowledge",
			"http://"+c.proxyAddr+"/default/h2web/").CombinedOutput()
		return string(out)
	}, 10*time.Second, 100*time.Millisecond).Should(Equal("HTTP/2 200"), "curl --http2-prior-knowledge")
}
