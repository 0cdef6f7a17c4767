package controller_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/controller"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestCA(t *testing.T) *testCA {
	g := NewWithT(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	g.Expect(err).NotTo(HaveOccurred())
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	g.Expect(err).NotTo(HaveOccurred())
	cert, err := x509.ParseCertificate(der)
	g.Expect(err).NotTo(HaveOccurred())
	return &testCA{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// serverCert is a certificate for name, signed by ca.
func (ca *testCA) serverCert(t *testing.T, name string) tls.Certificate {
	g := NewWithT(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	g.Expect(err).NotTo(HaveOccurred())
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	g.Expect(err).NotTo(HaveOccurred())
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// quietServer is a server that does not log the handshakes the tests fail on purpose.
func quietServer() *http.Server { return &http.Server{ErrorLog: log.New(io.Discard, "", 0)} }

// readyCondition is the breaker's Ready condition (or fails).
func readyCondition(g Gomega, namespace, name string) metav1.Condition {
	ready := meta.FindStatusCondition(getBreaker(g, namespace, name).Status.Conditions, cbv1.ConditionReady)
	g.Expect(ready).NotTo(BeNil())
	return *ready
}

// An https Service upstream is dialled at its endpoints and its
// certificate verified for <service>.<namespace>.svc against the bundle of
// tls.caConfigMap, which is watched: missing, it reads CAConfigMapNotFound;
// without a certificate, CABundleInvalid; with the right CA, calls are
// served (HTTP/2 by ALPN). Without a caConfigMap the certificate does not
// verify, a failure the Event names.
func TestHTTPSServiceUpstreamsVerifyTheirCertificate(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	ca, other := newTestCA(t), newTestCA(t)
	cert := ca.serverCert(t, "backend."+ns+".svc")
	address := serveOnTestHost(t, quietServer(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}), func(l net.Listener) net.Listener {
		return tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12})
	})
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "backend"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 443}}},
	}
	g.Expect(k8sClient.Create(ctx, svc)).To(Succeed())
	writeSlice(t, ns, "backend", "a", endpointAt(address))
	h := startManager(t, ns, controller.Options{})
	px := proxyFor(t, h)
	https := func(name string, trust *cbv1.UpstreamTLS) *cbv1.CircuitBreaker {
		return newCircuitBreaker(ns, name, func(cb *cbv1.CircuitBreaker) {
			cb.Spec.Upstream = cbv1.Upstream{Service: &cbv1.ServiceUpstream{Name: "backend", Port: intstr.FromString("http"), Scheme: "https"}, TLS: trust}
			cb.Spec.FailureThreshold = 1
			cb.Spec.RecoveryTimeout = &metav1.Duration{Duration: 2 * time.Minute}
		})
	}
	get := func(g Gomega, name string) (int, string) {
		resp, err := http.Get(px.URL + "/" + ns + "/" + name + "/")
		g.Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	// Without a CA bundle: the system's roots, which do not know ours.
	g.Expect(k8sClient.Create(ctx, https("untrusted", nil))).To(Succeed())
	g.Eventually(func(g Gomega) { g.Expect(readyCondition(g, ns, "untrusted").Status).To(Equal(metav1.ConditionTrue)) }).Should(Succeed())
	status, body := get(g, "untrusted")
	g.Expect(status).To(Equal(http.StatusBadGateway))
	g.Expect(body).To(ContainSubstring("certificate verification failed: x509: certificate signed by unknown authority"))
	g.Eventually(func(g Gomega) []string { return events(g, ns, "untrusted") }).Should(
		ContainElement(SatisfyAll(HavePrefix("Opened: "), ContainSubstring("certificate verification failed"))))

	// A bundle that is missing, then holds no certificate, then another
	// CA's, then ours.
	g.Expect(k8sClient.Create(ctx, https("trusted", &cbv1.UpstreamTLS{CAConfigMap: &cbv1.ConfigMapKey{Name: "cluster-ca"}}))).To(Succeed())
	g.Eventually(func(g Gomega) {
		ready := readyCondition(g, ns, "trusted")
		g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(ready.Reason).To(Equal(controller.ReasonCAConfigMapNotFound))
		g.Expect(ready.Message).To(ContainSubstring("ConfigMap " + ns + "/cluster-ca"))
	}).Should(Succeed())
	status, _ = get(g, "trusted")
	g.Expect(status).To(Equal(http.StatusServiceUnavailable))
	bundle := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cluster-ca"}, Data: map[string]string{"ca.crt": "not a certificate"}}
	g.Expect(k8sClient.Create(ctx, bundle)).To(Succeed())
	g.Eventually(func(g Gomega) {
		ready := readyCondition(g, ns, "trusted")
		g.Expect(ready.Reason).To(Equal(controller.ReasonCABundleInvalid))
		g.Expect(ready.Message).To(ContainSubstring(`no PEM certificate under key "ca.crt"`))
	}).Should(Succeed())
	bundle.Data["ca.crt"] = other.pem + ca.pem // a bundle of two: ours among them
	g.Expect(k8sClient.Update(ctx, bundle)).To(Succeed())
	g.Eventually(func(g Gomega) {
		status, body := get(g, "trusted")
		g.Expect(status).To(Equal(http.StatusOK), body)
		g.Expect(body).To(Equal("HTTP/2.0"), "HTTP/2 by ALPN")
	}).Should(Succeed())
	g.Expect(readyCondition(g, ns, "trusted").Status).To(Equal(metav1.ConditionTrue))
	g.Expect(getBreaker(g, ns, "trusted").Status.State).To(Equal(cbv1.StateClosed))
}

// A certificate for another name than tls.serverName does not verify,
// whoever signed it.
func TestHTTPSServerNameIsVerified(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	ca := newTestCA(t)
	cert := ca.serverCert(t, "backend."+ns+".svc")
	address := serveOnTestHost(t, quietServer(), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), func(l net.Listener) net.Listener {
		return tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	})
	ctx := context.Background()
	g.Expect(k8sClient.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "backend"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 443}}},
	})).To(Succeed())
	writeSlice(t, ns, "backend", "a", endpointAt(address))
	g.Expect(k8sClient.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ca"},
		Data: map[string]string{"bundle.pem": ca.pem}})).To(Succeed())
	h := startManager(t, ns, controller.Options{})
	px := proxyFor(t, h)
	tests := []struct {
		serverName string
		want       int
	}{
		{serverName: "", want: http.StatusOK}, // the default: backend.<ns>.svc
		{serverName: "backend." + ns + ".svc", want: http.StatusOK},
		{serverName: "elsewhere." + ns + ".svc", want: http.StatusBadGateway},
	}
	for i, tt := range tests {
		name := "name-" + string(rune('a'+i))
		g.Expect(k8sClient.Create(ctx, newCircuitBreaker(ns, name, func(cb *cbv1.CircuitBreaker) {
			cb.Spec.Upstream = cbv1.Upstream{Service: &cbv1.ServiceUpstream{Name: "backend", Port: intstr.FromInt32(443), Scheme: "https"},
				TLS: &cbv1.UpstreamTLS{ServerName: tt.serverName, CAConfigMap: &cbv1.ConfigMapKey{Name: "ca", Key: "bundle.pem"}}}
		}))).To(Succeed())
		g.Eventually(func(g Gomega) int { return call(g, px.URL+"/"+ns+"/"+name+"/") }).Should(Equal(tt.want), "serverName %q", tt.serverName)
	}
}

// An https URL upstream trusts the bundle of tls.caConfigMap too, for the
// URL's host or tls.serverName; without tls, the system's roots.
func TestHTTPSURLUpstreamsTrustTheirBundle(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	up.Config.ErrorLog = log.New(io.Discard, "", 0)
	up.StartTLS() // its certificate is for 127.0.0.1 and example.com
	t.Cleanup(up.Close)
	ctx := context.Background()
	g.Expect(k8sClient.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ca"},
		Data: map[string]string{"ca.crt": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}))}})).To(Succeed())
	h := startManager(t, ns, controller.Options{AllowURLUpstreams: true})
	px := proxyFor(t, h)
	bundle := &cbv1.ConfigMapKey{Name: "ca"}
	tests := []struct {
		name  string
		trust *cbv1.UpstreamTLS
		want  int
	}{
		{name: "system-roots", want: http.StatusBadGateway},
		{name: "bundle", trust: &cbv1.UpstreamTLS{CAConfigMap: bundle}, want: http.StatusOK},
		{name: "bundle-and-name", trust: &cbv1.UpstreamTLS{CAConfigMap: bundle, ServerName: "example.com"}, want: http.StatusOK},
		{name: "bundle-wrong-name", trust: &cbv1.UpstreamTLS{CAConfigMap: bundle, ServerName: "example.org"}, want: http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(k8sClient.Create(ctx, urlBreaker(ns, tt.name, up.URL, 100, time.Minute, func(cb *cbv1.CircuitBreaker) {
				cb.Spec.Upstream.TLS = tt.trust
			}))).To(Succeed())
			g.Eventually(func(g Gomega) int { return call(g, px.URL+"/"+ns+"/"+tt.name+"/") }).Should(Equal(tt.want))
		})
	}
}
