package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"net/http"
	"strings"
	"sync"
)

// Loop detection. A call whose upstream leads back into the proxy (through
// any replica) must be cut at the first hop, and that 508 is no verdict on
// the upstream. Neither may an upstream fake it, nor may a service that
// copies incoming headers onto its own outbound calls be cut. So the marks
// are bound to the hop, with a secret every replica shares and no upstream
// sees:
//
//   - what the proxy forwards carries hopHeader, a MAC of the local address
//     of the connection it goes out on (set once the connection is known);
//   - a call that carries this installation's Via entry and a hop mark for
//     the address it came from is a loop: the proxy answers 508 with
//     loopHeader, a MAC of that address under another label;
//   - the hop that sent it accepts a 508 as a loop only with the loop mark
//     of its own connection, and passes it on, re-marked, only to a caller
//     that is itself a hop of the proxy.
//
// A copied hop mark names another connection, and a loop mark cannot be
// made without the secret. Where an address translation between the hops
// hides the connection (hairpin NAT), the Via entries still end the loop
// after maxOwnHops passes, as an ordinary 508.

const (
	hopHeader  = "X-Circuit-Breaker-Hop"
	loopHeader = "X-Circuit-Breaker-Loop"
	// maxOwnHops is how many of this installation's Via entries a call may
	// carry before it is a loop even without a hop mark.
	maxOwnHops = 8
)

// Labels keep a hop mark from ever passing as a loop mark.
const (
	hopLabel  = "hop "
	loopLabel = "loop "
)

// marks makes and checks hop and loop marks with the installation's secret.
type marks struct {
	macs sync.Pool // of hash.Hash, keyed with the secret
}

func newMarks(secret []byte) *marks {
	m := &marks{}
	m.macs.New = func() any { return hmac.New(sha256.New, secret) }
	return m
}

// mark is label's MAC of addr, in 22 characters.
func (m *marks) mark(label, addr string) string {
	h := m.macs.Get().(hash.Hash)
	h.Reset()
	_, _ = h.Write([]byte(label))
	_, _ = h.Write([]byte(addr))
	var sum [sha256.Size]byte
	out := h.Sum(sum[:0])
	m.macs.Put(h)
	return base64.RawURLEncoding.EncodeToString(out[:16])
}

// valid reports whether got is label's mark of addr.
func (m *marks) valid(got, label, addr string) bool {
	return got != "" && addr != "" && hmac.Equal([]byte(got), []byte(m.mark(label, addr)))
}

// ownHops counts this installation's entries in r's Via header.
func (p *Proxy) ownHops(r *http.Request) int {
	n := 0
	for _, v := range r.Header["Via"] {
		n += strings.Count(v, p.via)
	}
	return n
}

// looped reports whether r is a call this installation forwarded into
// itself: it carries the installation's Via entry and a hop mark of the
// connection it came on, or the entry maxOwnHops times. fromHop reports a
// valid hop mark alone: the caller is a hop of this proxy.
func (p *Proxy) looped(r *http.Request) (looped, fromHop bool) {
	hops := p.ownHops(r)
	if hops == 0 {
		return false, false
	}
	fromHop = p.marks.valid(r.Header.Get(hopHeader), hopLabel, r.RemoteAddr)
	return fromHop || hops >= maxOwnHops, fromHop
}
