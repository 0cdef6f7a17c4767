package proxy

import (
	"context"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// Headers the proxy sets on what it answers.
const (
	// StateHeader says why a call was not forwarded: open, half-open, saturated.
	StateHeader = "X-Circuit-Breaker-State"
)

// Options configure a Proxy.
type Options struct {
	// LoopToken names this installation in the Via entry it adds to what it
	// forwards. Every replica must use the same one: a call that comes back
	// carrying it, through whichever replica, is a loop.
	LoopToken string
	// LoopSecret keys the hop and loop marks (loop.go): the same on every
	// replica, and never sent to an upstream. Empty: derived from
	// LoopToken, which upstreams see (tests only).
	LoopSecret []byte
	// DenyNetworks are ranges the dial guard refuses besides its own:
	// --upstream-deny-cidrs (node and pod ranges) and the API server's
	// addresses.
	DenyNetworks []*net.IPNet
	// ClusterDomain is the cluster's DNS domain (default cluster.local):
	// a Host "<service>.<namespace>.svc.<cluster-domain>" names an exposed
	// breaker.
	ClusterDomain string
	// MaxConcurrentRequests caps the calls in flight through every route
	// together (--max-concurrent-requests); beyond it callers get 503
	// saturated, no verdict. 0 is no cap.
	MaxConcurrentRequests int64
}

// Proxy is the data plane's http.Handler. It owns the transport and the
// copy buffers that both of its paths use: forward, for every call that is
// not an upgrade, and upgrades, the httputil.ReverseProxy that upgrades go
// through.
type Proxy struct {
	table     *Table
	clock     clock.PassiveClock
	transport *splitTransport
	buffers   httputil.BufferPool
	upgrades  *httputil.ReverseProxy
	// via is this installation's Via entry, "1.1 circuit-breaker-<token>";
	// viaOnly is the header value of a call that carried no Via, shared by
	// every such call (its capacity is its length: an append copies it).
	via     string
	viaOnly []string
	marks   *marks
	// svcSuffix is ".svc." and the cluster domain.
	svcSuffix string
	// inFlight counts the calls being forwarded, against maxInFlight.
	inFlight    atomic.Int64
	maxInFlight int64
}

// New returns a Proxy that serves the routes of table.
func New(table *Table, clk clock.PassiveClock, opts Options) *Proxy {
	p := &Proxy{
		table:     table,
		clock:     clk,
		transport: newSplitTransport(dialGuard(ownAddresses(), opts.DenyNetworks)),
		buffers:   NewBufferPool(),
		via:       "1.1 circuit-breaker-" + opts.LoopToken,
	}
	p.viaOnly = []string{p.via}
	domain := strings.Trim(opts.ClusterDomain, ".") // as the controller reads --cluster-domain
	if domain == "" {
		domain = "cluster.local"
	}
	p.svcSuffix = ".svc." + strings.ToLower(domain)
	secret := opts.LoopSecret
	if len(secret) == 0 {
		secret = []byte("circuit-breaker-loop " + opts.LoopToken)
	}
	p.marks = newMarks(secret)
	p.maxInFlight = opts.MaxConcurrentRequests
	if p.maxInFlight <= 0 {
		p.maxInFlight = math.MaxInt64
	}
	p.upgrades = p.newUpgrades()
	return p
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A gRPC caller gets every answer of the proxy's own as gRPC does
	// (grpc.go): a trailers-only answer with its status.
	grpc := isGRPC(r.Header)
	var (
		key  breaker.Key
		rest string
	)
	switch hostKey, match := p.table.hosts.lookup(r.Host, p.svcSuffix); match {
	case hostRouted:
		// Called by its exposed Service's name: the path is the caller's own.
		key, rest = hostKey, r.URL.EscapedPath()
	case hostAmbiguous:
		answerError(w, grpc, http.StatusNotFound, "several circuit breakers are exposed as "+strconv.Quote(r.Host)+
			": call one as <service>.<namespace>, <service>.<namespace>.svc or <service>.<namespace>"+p.svcSuffix)
		return
	default:
		var ok bool
		if key, rest, ok = splitPath(r.URL.EscapedPath()); !ok {
			answerError(w, grpc, http.StatusNotFound, "no circuit breaker here: use /<namespace>/<name>/<path>, or an exposed Service's name as the Host")
			return
		}
	}
	rt, ok := p.table.get(key)
	if !ok {
		answerError(w, grpc, http.StatusNotFound, "circuit breaker '"+string(key)+"' not found")
		return
	}
	if climbs(rest) {
		answerError(w, grpc, http.StatusBadRequest, "circuit breaker '"+string(key)+"': a path may not have . or .. segments")
		return
	}
	if rt.refused != "" {
		answerError(w, grpc, rt.refusedStatus, "circuit breaker '"+string(key)+"' may not forward: "+rt.refused)
		return
	}
	looped, fromHop := p.looped(r)
	if looped {
		if fromHop {
			w.Header().Set(loopHeader, p.marks.mark(loopLabel, r.RemoteAddr))
		}
		answerError(w, grpc, http.StatusLoopDetected, "circuit breaker '"+string(key)+"': this call already passed through this proxy (a loop)")
		return
	}
	upgrade := upgradeType(r.Header)
	if upgrade != "" && !strings.EqualFold(upgrade, "websocket") {
		// Another protocol (h2c above all) would become a tunnel whose
		// calls the breaker never sees.
		answerError(w, grpc, http.StatusBadRequest, "circuit breaker '"+string(key)+"' passes on only WebSocket upgrades, not "+strconv.Quote(upgrade))
		return
	}
	if p.inFlight.Add(1) > p.maxInFlight {
		p.inFlight.Add(-1)
		answerSaturated(w, grpc, "the proxy has "+strconv.FormatInt(p.maxInFlight, 10)+" calls in flight already")
		return
	}
	defer p.inFlight.Add(-1)
	if rt.inFlight.Add(1) > rt.MaxConcurrent {
		rt.inFlight.Add(-1)
		answerSaturated(w, grpc, "circuit breaker '"+string(key)+"' has "+strconv.FormatInt(rt.MaxConcurrent, 10)+" calls in flight already")
		return
	}
	defer rt.inFlight.Add(-1)
	ticket, err := rt.breaker.Allow()
	if err != nil {
		p.reject(w, grpc, rt, err)
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	c := &call{Context: ctx, callerCtx: r.Context(), cancel: cancel, route: rt, metrics: rt.metrics(), ticket: ticket, w: w, rest: rest, start: time.Now(),
		marks: p.marks, grpcCaller: grpc}
	if fromHop {
		c.callerHop = r.RemoteAddr
	}
	if r.Body != nil && r.Body != http.NoBody {
		// The outbound request reads the caller's body through c.body; r
		// keeps the server's own, which tells the server whether a caller
		// that asked for 100 Continue still owes its body.
		c.body = &callerBody{ReadCloser: r.Body}
	}
	c.trace.GotConn, c.trace.WroteHeaders, c.trace.WroteRequest = c.gotConn, c.wroteHeaders, c.wroteRequest
	if rt.Host != "" {
		// A Service upstream: this call's endpoint, picked now.
		if c.endpoint = pick(rt.endpoints, time.Now().UnixNano()); c.endpoint != nil {
			c.endpoint.inFlight.Add(1)
			defer c.endpoint.done()
		}
	}
	c.timer = time.AfterFunc(rt.Timeout, c.expire)
	defer func() {
		c.timer.Stop()
		if c.resetOnIdle.Load() {
			c.endMu.Lock() // waits for an expire under way
			c.handlerDone = true
			c.endMu.Unlock()
		}
		cancel(nil)
		if !c.reported {
			// No verdict was reached (e.g. a panic): give a probe slot back.
			c.settle(noVerdict, breaker.Failure{})
		}
	}()
	if upgrade != "" {
		in := r.WithContext(httptrace.WithClientTrace(c, &c.trace))
		if c.body != nil {
			in.Body = c.body
		}
		p.upgrades.ServeHTTP(&upgradeWriter{ResponseWriter: w, idle: rt.StreamIdleTimeout}, in)
		return
	}
	p.forward(w, r, c)
}

// addVia adds this installation's Via entry to h.
func (p *Proxy) addVia(h http.Header) {
	if via := h["Via"]; len(via) > 0 {
		h["Via"] = append(via, p.via)
	} else {
		h["Via"] = p.viaOnly // no allocation per call
	}
}

func writeError(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{message})
}
