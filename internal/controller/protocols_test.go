package controller_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/controller"
	"github.com/circuitbreaker-io/operator/internal/testhosts"
)

// serveOnTestHost makes one test host and serves handler on its IPv4
// address, port 8080, as srv (its Handler set here) says; it returns the
// host's slice endpoint.
func serveOnTestHost(t *testing.T, srv *http.Server, handler http.Handler, listen func(net.Listener) net.Listener) string {
	hosts, err := testhosts.New(1)
	if err != nil {
		t.Skipf("no test hosts (EndpointSlices may not hold loopback addresses): %v", err)
	}
	t.Cleanup(hosts.Close)
	l, err := hosts.Listen(netip.AddrPortFrom(hosts.IPv4(0), 8080))
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	if listen != nil {
		l = listen(l)
	}
	srv.Handler, srv.ReadHeaderTimeout = handler, 10*time.Second
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return hosts.IPv4(0).String()
}

// A Service upstream is spoken to in h2c when spec.upstream.protocol says
// so or its port's appProtocol is kubernetes.io/h2c or grpc, and in
// HTTP/1.1 otherwise; the test host speaks both and answers which.
func TestServiceUpstreamProtocols(t *testing.T) {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	address := serveOnTestHost(t, &http.Server{Protocols: protocols}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}), nil)
	ns := newNamespace(t)
	h := startManager(t, ns, controller.Options{})
	px := proxyFor(t, h)
	tests := []struct {
		name        string
		appProtocol *string
		protocol    string
		want        string
	}{
		{name: "plain", want: "HTTP/1.1"},
		{name: "app-h2c", appProtocol: ptr.To("kubernetes.io/h2c"), want: "HTTP/2.0"},
		{name: "app-grpc", appProtocol: ptr.To("grpc"), want: "HTTP/2.0"},
		{name: "app-http", appProtocol: ptr.To("http"), want: "HTTP/1.1"},
		{name: "spec-h2c", protocol: cbv1.ProtocolH2C, want: "HTTP/2.0"},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: tt.name},
				Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, AppProtocol: tt.appProtocol}}},
			}
			g.Expect(k8sClient.Create(ctx, svc)).To(Succeed())
			writeSlice(t, ns, tt.name, "a", endpointAt(address))
			g.Expect(k8sClient.Create(ctx, newCircuitBreaker(ns, tt.name, func(cb *cbv1.CircuitBreaker) {
				cb.Spec.Upstream = cbv1.Upstream{Service: &cbv1.ServiceUpstream{Name: tt.name, Port: intstr.FromString("http")}, Protocol: tt.protocol}
			}))).To(Succeed())
			g.Eventually(func(g Gomega) string {
				resp, err := http.Get(px.URL + "/" + ns + "/" + tt.name + "/")
				g.Expect(err).NotTo(HaveOccurred())
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				g.Expect(resp.StatusCode).To(Equal(http.StatusOK), string(body))
				return string(body)
			}).Should(Equal(tt.want))
		})
	}
}
