//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
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

// timelineDrawn checks that the tile draws the breaker's timeline as the
// API gives it: a band rectangle per minute, the last one open at the
// right edge, a step per minute in each sparkline, and the totals those
// of the points: at least 22 calls of which 2 failed, and 5 rejections
// (the traffic dashboardTest sent).
func timelineDrawn(t *testing.T, c *cluster, ctx context.Context, tile string) {
	g := NewWithT(t)
	svg := tile + ` svg.timeline`
	attr := func(name string) (string, error) {
		return chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%q).dataset.%s || ""`, svg, name)))
	}
	g.Eventually(func() (string, error) { return attr("rejections") }, 15*time.Second, 200*time.Millisecond).Should(Equal("5"))

	type point struct {
		Time                              int64
		Calls, Failures, Rejections, Slow int
		P99Ms                             float64 `json:"p99_ms"`
		State                             string
	}
	var points []point
	// The page fetched its timeline a moment before the test does: they
	// agree unless a minute began in between, and then again at the
	// page's next fetch.
	g.Eventually(func(g Gomega) {
		var api struct {
			Success  bool
			Timeline struct {
				StepSeconds int `json:"step_seconds"`
				Points      []point
			}
		}
		resp := httpDo(g, "http://"+c.api+"/api/circuit-breakers/default/dash/timeline")
		g.Expect(resp.status).To(Equal(200))
		g.Expect(json.Unmarshal([]byte(resp.body), &api)).To(Succeed(), resp.body)
		g.Expect(api.Success).To(BeTrue())
		g.Expect(api.Timeline.StepSeconds).To(Equal(60))
		points = api.Timeline.Points
		g.Expect(points).NotTo(BeEmpty())
		g.Expect(len(points)).To(BeNumerically("<=", 3), "the breaker is a minute or two old")
		calls, failures, rejections := 0, 0, 0
		for _, p := range points {
			calls, failures, rejections = calls+p.Calls, failures+p.Failures, rejections+p.Rejections
			g.Expect(p.Time % 60).To(BeZero())
		}
		g.Expect(calls).To(BeNumerically(">=", 22))
		g.Expect(failures).To(Equal(2))
		g.Expect(rejections).To(Equal(5))
		last := points[len(points)-1]
		g.Expect(last.State).To(Equal("open"))

		for name, want := range map[string]string{
			"points": fmt.Sprint(len(points)), "calls": fmt.Sprint(calls), "failures": "2", "rejections": "5",
		} {
			g.Expect(attr(name)).To(Equal(want), "data-%s", name)
		}
		rects, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](fmt.Sprintf(
			`[...document.querySelectorAll(%q)].map(r => r.dataset.time + " " + r.getAttribute("class") + " " + r.getAttribute("x"))`, svg+` .band rect`)))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(rects).To(HaveLen(len(points)), "a band rectangle per minute")
		g.Expect(rects[len(rects)-1]).To(Equal(fmt.Sprintf("%d open 59", last.Time)), "the last minute at the right edge, open")
		for _, line := range []string{"calls", "failures", "rejections"} {
			vertices, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(
				`document.querySelector(%q).points.numberOfItems`, svg+" polyline."+line)))
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(vertices).To(Equal(2*len(points)), "a step per minute for %s", line)
		}
		legend, err := chromedp.Run(ctx, chromedp.Text(tile+` .legend`))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(legend).To(MatchRegexp(`^last (minute|\d min): %d calls · 2 failed · 5 rejected · p99 [0-9.]+ ms$`, calls))
	}, 40*time.Second, time.Second).Should(Succeed())
	t.Logf("timeline: %+v", points)
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
		for range 20 {
			g.Expect(httpGet(g, route)).To(Equal(200))
		}
		up.failing.Store(true)
		defer up.failing.Store(false)
		for range 2 {
			g.Expect(httpGet(g, route)).To(Equal(500))
		}
		for range 5 {
			g.Expect(httpGet(g, route)).To(Equal(503), "rejected while open")
		}
		g.Expect(chromedp.Do(ctx, chromedp.WaitVisible(tile+`[data-state="open"]`))).To(Succeed())
		timelineDrawn(t, c, ctx, tile)
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
		if os.Getenv("E2E_UPDATE_DOCS") != "" {
			// docs/dashboard.png, the README's picture: this run's real data.
			png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(os.WriteFile(filepath.Join(root, "docs", "dashboard.png"), png, 0o644)).To(Succeed())
		}

		g.Expect(chromedp.Do(ctx,
			chromedp.Click(tile+` button[data-action="reset"]`),
			chromedp.WaitVisible(tile+`[data-state="closed"]`),
		)).To(Succeed())
		g.Expect(c.kubectlQuiet("get", "cb", "dash", "-o", "jsonpath={.status.state}")).To(Equal("Closed"))
		screenshot(t, ctx, "dashboard-reset.png")

		// 500 more breakers: the dashboard shows a page of 200 at a time of
		// those its filter matches, grouped by namespace, and pages through
		// them; the header counts every match by state, as the API does.
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
		eval := func(js string) string {
			out, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
			g.Expect(err).NotTo(HaveOccurred())
			return out
		}
		pageOf := func() string {
			return eval(`(() => {
				const keys = [...document.querySelectorAll(".tile")].map(t => t.dataset.key);
				return document.getElementById("page").textContent + " " + keys.length + " " + keys[0] + " " + keys[keys.length - 1] +
					" " + document.querySelectorAll("section").length;
			})()`)
		}
		g.Expect(chromedp.Do(ctx, chromedp.SendKeys(`#filter`, "team-"))).To(Succeed())
		g.Eventually(pageOf, 60*time.Second, 250*time.Millisecond).Should(Equal("1–200 of 500 200 team-0/svc-000 team-3/svc-493 4"))
		g.Expect(chromedp.Do(ctx, chromedp.ScrollIntoView(`section[data-namespace="team-3"]`))).To(Succeed())
		screenshot(t, ctx, "dashboard-500.png")
		// The header's counts are the API's for the same filter (the
		// breakers settle meanwhile: compared until both agree).
		apiCounts := func() string {
			resp, err := http.Get("http://" + c.api + "/api/circuit-breakers?q=team-&limit=1")
			g.Expect(err).NotTo(HaveOccurred())
			resp.Body.Close()
			var counts []string
			for _, pair := range strings.Split(resp.Header.Get("X-State-Counts"), ",") {
				state, n, _ := strings.Cut(pair, "=")
				counts = append(counts, n+" "+state)
			}
			return strings.Join(counts, ",")
		}
		g.Eventually(func() bool {
			shown := eval(`["n-closed", "n-half-open", "n-open"].map(id => document.getElementById(id).textContent).join(",")`)
			return shown == apiCounts()
		}, 10*time.Second, 250*time.Millisecond).Should(BeTrue(), "the header's counts are the API's")
		g.Expect(chromedp.Do(ctx, chromedp.Click(`#next`))).To(Succeed())
		g.Eventually(pageOf, 10*time.Second, 100*time.Millisecond).Should(Equal("201–400 of 500 200 team-4/svc-004 team-7/svc-497 4"))
		g.Expect(chromedp.Do(ctx, chromedp.Click(`#next`))).To(Succeed())
		g.Eventually(pageOf, 10*time.Second, 100*time.Millisecond).Should(Equal("401–500 of 500 100 team-8/svc-008 team-9/svc-499 2"))
		g.Expect(eval(`String(document.getElementById("next").disabled)`)).To(Equal("true"))
		g.Expect(chromedp.Do(ctx, chromedp.Click(`#prev`))).To(Succeed())
		g.Eventually(pageOf, 10*time.Second, 100*time.Millisecond).Should(Equal("201–400 of 500 200 team-4/svc-004 team-7/svc-497 4"))
		// A narrower filter starts again at its first page.
		g.Expect(chromedp.Do(ctx, chromedp.SendKeys(`#filter`, "3/"))).To(Succeed())
		g.Eventually(pageOf, 10*time.Second, 100*time.Millisecond).Should(Equal("1–50 of 50 50 team-3/svc-003 team-3/svc-493 1"))
		g.Expect(eval(`String(document.getElementById("prev").disabled) + String(document.getElementById("next").disabled)`)).To(Equal("truetrue"))

		// A hidden tab stops polling (each poll of 500 breakers is their
		// whole JSON), and polls again once shown.
		visible := func(shown bool) int {
			n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`Object.defineProperty(document, "hidden", {value: %t, configurable: true});
				document.dispatchEvent(new Event("visibilitychange")); received`, !shown)))
			g.Expect(err).NotTo(HaveOccurred())
			return n
		}
		polls := func() int { n, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`received`)); return n }
		hiddenAt := visible(false)
		g.Consistently(polls, 3*time.Second, 250*time.Millisecond).Should(BeNumerically("<=", hiddenAt+1), "at most the poll in flight")
		visible(true)
		g.Eventually(polls, 5*time.Second, 100*time.Millisecond).Should(BeNumerically(">", hiddenAt+1), "shown, it polls again")
	}
}
