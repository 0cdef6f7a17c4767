//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	. "github.com/onsi/gomega"
)

// chromium finds Debian's chromium, or skips the test saying how to get it.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	t.Skip("the dashboard browser test needs headless Chromium: apt-get install chromium (CI installs it)")
	return ""
}

// browse opens a headless Chromium; the flags keep it off the network.
func browse(t *testing.T) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}

// screenshot saves the visible part of the page under the test's artifacts.
func screenshot(t *testing.T, ctx context.Context, name string) {
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	path := filepath.Join(t.ArtifactDir(), name)
	NewWithT(t).Expect(os.WriteFile(path, png, 0o644)).To(Succeed())
	t.Logf("screenshot: %s", path)
}

// dashboardTest loads the dashboard of the running manager, sees a tile turn
// open after its upstream fails, clicks reset and sees it close.
func dashboardTest(c *cluster, up *upstream) func(t *testing.T) {
	return func(t *testing.T) {
		g := NewWithT(t)
		ctx := browse(t)
		c.kubectlApply(t, fmt.Sprintf(`apiVersion: circuitbreaker.io/v1alpha1
kind: CircuitBreaker
metadata: {name: dash, namespace: default}
spec:
  upstream: {url: %q}
  failureThreshold: 2
  recoveryTimeout: 1h
`, up.URL))
		tile := `.tile[data-key="default/dash"]`
		g.Expect(chromedp.Do(ctx,
			chromedp.Navigate("http://"+c.api+"/"),
			chromedp.WaitVisible(tile+`[data-state="closed"]`),
		)).To(Succeed())

		// The Observe sample says it observes: its badge carries the mode.
		observe := `.tile[data-key="default/recommendations"]`
		g.Expect(chromedp.Do(ctx, chromedp.WaitVisible(observe+`[data-mode="Observe"]`))).To(Succeed())
		g.Expect(chromedp.Run(ctx, chromedp.Text(observe+` .badge`))).To(Equal("closed (Observe)"))

		route := "http://" + c.proxyAddr + "/default/dash/"
		g.Eventually(func() int { return httpGet(g, route) }, 10*time.Second).Should(Equal(200))
		up.failing.Store(true)
		defer up.failing.Store(false)
		for range 2 {
			g.Expect(httpGet(g, route)).To(Equal(500))
		}
		g.Expect(chromedp.Do(ctx, chromedp.WaitVisible(tile+`[data-state="open"]`))).To(Succeed())
		failures, err := chromedp.Run(ctx, chromedp.Text(tile+` .muted`))
		g.Expect(err).NotTo(HaveOccurred())
		countdown, err := chromedp.Run(ctx, chromedp.Text(tile+` .countdown`))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(failures).To(Equal("failures 2 / 2 · ConsecutiveFailures"))
		g.Expect(countdown).To(MatchRegexp(`^probing in (59m \d+s|1h 0m)$`))
		// The fleet's view, from the status: this manager is its only replica.
		g.Eventually(func() (string, error) {
			return chromedp.Run(ctx, chromedp.Text(tile+` .replicas`))
		}, 10*time.Second).Should(MatchRegexp(`^open on 1/1 replicas: \S+ open \(2\)$`))
		screenshot(t, ctx, "dashboard-open.png")

		g.Expect(chromedp.Do(ctx,
			chromedp.Click(tile+` button[data-action="reset"]`),
			chromedp.WaitVisible(tile+`[data-state="closed"]`),
		)).To(Succeed())
		g.Expect(c.kubectlQuiet("get", "cb", "dash", "-o", "jsonpath={.status.state}")).To(Equal("Closed"))
		screenshot(t, ctx, "dashboard-reset.png")

		// Readable with 500 breakers: every tile is there, grouped by namespace.
		var many strings.Builder
		for i := range 500 {
			fmt.Fprintf(&many, "---\napiVersion: circuitbreaker.io/v1alpha1\nkind: CircuitBreaker\n"+
				"metadata: {name: svc-%03d, namespace: team-%d}\nspec: {upstream: {service: {name: backend, port: 80}}}\n", i, i%10)
		}
		for i := range 10 {
			c.kubectl(g, "create", "namespace", fmt.Sprintf("team-%d", i))
			c.kubectl(g, "create", "service", "clusterip", "backend", "--tcp=80:80", "-n", fmt.Sprintf("team-%d", i))
		}
		c.kubectlApply(t, many.String())
		g.Eventually(func() int {
			tiles, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('.tile[data-key^="team-"]').length`))
			return tiles
		}, 60*time.Second, time.Second).Should(Equal(500))
		sections, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('section[data-namespace^="team-"]').length`))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(sections).To(Equal(10))
		g.Expect(chromedp.Do(ctx, chromedp.ScrollIntoView(`section[data-namespace="team-3"]`))).To(Succeed())
		screenshot(t, ctx, "dashboard-500.png")
	}
}
