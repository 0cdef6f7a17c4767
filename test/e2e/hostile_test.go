//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// hostileCallersStep drives the real manager with callers that hold what
// they can: ones that never read a 64 MiB answer, and ones that ask for
// 100 Continue from an upstream that wants no body.
func hostileCallersStep(t *testing.T, g Gomega, c *cluster) {
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/big" {
			_, _ = io.WriteString(w, "ok") // without reading any body
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(1024*len(chunk)))
		for range 1024 { // 64 MiB: more than loopback's socket buffers hold
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer up.Close()
	c.kubectlApply(t, fmt.Sprintf(`apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: hostile, namespace: default}
spec: {upstream: {url: %q}, maxConcurrentRequests: 2, streamIdleTimeout: 2s}
`, up.URL))
	defer c.kubectlQuiet("delete", "cb", "hostile")
	base := "http://" + c.proxyAddr + "/default/hostile"
	g.Eventually(func() int { return httpGet(g, base+"/x") }, 10*time.Second).Should(Equal(200))

	// Two callers that never read (beyond the status line, which says
	// they hold a slot) hold both slots, for one idle timeout. A holder
	// that came while the last call above still had its slot tries again.
	for held := 0; held < 2; {
		conn, err := net.Dial("tcp", c.proxyAddr)
		g.Expect(err).NotTo(HaveOccurred())
		defer conn.Close()
		_, err = io.WriteString(conn, "GET /default/hostile/big HTTP/1.1\r\nHost: p\r\n\r\n")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(conn.SetReadDeadline(time.Now().Add(10 * time.Second))).To(Succeed())
		status, err := bufio.NewReader(conn).ReadString('\n')
		g.Expect(err).NotTo(HaveOccurred())
		if strings.HasPrefix(status, "HTTP/1.1 200") {
			held++
		}
	}
	g.Eventually(func() int { return httpGet(g, base+"/x") }, 10*time.Second, 20*time.Millisecond).Should(Equal(503), "both slots held")
	g.Eventually(func() int { return httpGet(g, base+"/x") }, 10*time.Second, 100*time.Millisecond).Should(Equal(200),
		"the slots come back after streamIdleTimeout")

	// Expect: 100-continue to an upstream that answers without the body.
	conn, err := net.Dial("tcp", c.proxyAddr)
	g.Expect(err).NotTo(HaveOccurred())
	defer conn.Close()
	_, err = io.WriteString(conn, "POST /default/hostile/upload HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(conn.SetReadDeadline(time.Now().Add(10 * time.Second))).To(Succeed())
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	g.Expect(err).NotTo(HaveOccurred(), "the caller gets an answer")
	resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(200))
}
