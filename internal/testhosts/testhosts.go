// Package testhosts makes the project's own test hosts for tests that need
// addresses an EndpointSlice may hold (the API server refuses loopback and
// link-local ones): a network namespace joined to this one by a veth pair,
// its side holding addresses in 198.18.0.0/15 and fdcb::/16, with servers
// listening inside it. Test traffic goes only there, never to this
// machine's own interface addresses. It needs root and iproute2; New says
// why when it cannot make them.
package testhosts

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Hosts is one network namespace of test hosts.
type Hosts struct {
	name string
	// v4 and v6 are the namespace side's addresses, one per host.
	v4, v6 []netip.Addr
}

// New makes a namespace with n test hosts, each with an IPv4 and an IPv6
// address; Close removes it.
func New(n int) (*Hosts, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("test hosts need root (a network namespace and a veth pair)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("test hosts need iproute2's ip: %w", err)
	}
	if n < 1 || n > 200 {
		return nil, fmt.Errorf("1 to 200 test hosts, not %d", n)
	}
	// One /24 (and /64) of the ranges per namespace, picked at random, so
	// that test processes running at once do not collide; a subnet whose
	// interface exists already (another process's, or one a killed
	// process left) is given up for another.
	var err error
	for range subnetAttempts {
		var b [2]byte
		_, _ = rand.Read(b[:])
		var h *Hosts
		if h, err = newInSubnet(n, 1+int(binary.BigEndian.Uint16(b[:]))%254); err == nil {
			return h, nil
		}
		if !errors.Is(err, errSubnetTaken) {
			return nil, err
		}
	}
	return nil, err
}

// subnetAttempts is how many random subnets New tries.
const subnetAttempts = 8

// errSubnetTaken is a subnet whose namespace or interfaces exist already.
var errSubnetTaken = errors.New("the subnet's namespace or interfaces exist already")

// newInSubnet makes the namespace and its n hosts in 198.18.<subnet>.0/24
// and fdcb:0:0:<subnet>::/64.
func newInSubnet(n, subnet int) (*Hosts, error) {
	h := &Hosts{name: fmt.Sprintf("cbtest-%d-%d", os.Getpid(), subnet)}
	hostIf, nsIf := fmt.Sprintf("cbh%d", subnet), fmt.Sprintf("cbn%d", subnet)
	const add = "add"
	steps := make([][]string, 0, 8+2*n)
	steps = append(steps,
		[]string{"netns", add, h.name},
		[]string{"link", add, hostIf, "type", "veth", "peer", "name", nsIf},
		[]string{"link", "set", nsIf, "netns", h.name},
		[]string{"addr", add, fmt.Sprintf("198.18.%d.1/24", subnet), "dev", hostIf},
		[]string{"-6", "addr", add, fmt.Sprintf("fdcb:0:0:%x::1/64", subnet), "dev", hostIf, "nodad"},
		[]string{"link", "set", hostIf, "up"},
		[]string{"-n", h.name, "link", "set", "lo", "up"},
		[]string{"-n", h.name, "link", "set", nsIf, "up"},
	)
	for i := range n {
		v4 := netip.MustParseAddr(fmt.Sprintf("198.18.%d.%d", subnet, i+2))
		v6 := netip.MustParseAddr(fmt.Sprintf("fdcb:0:0:%x::%x", subnet, i+2))
		h.v4, h.v6 = append(h.v4, v4), append(h.v6, v6)
		steps = append(steps,
			[]string{"-n", h.name, "addr", add, v4.String() + "/24", "dev", nsIf},
			[]string{"-n", h.name, "-6", "addr", add, v6.String() + "/64", "dev", nsIf, "nodad"})
	}
	for i, args := range steps {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			if i > 0 {
				h.Close() // never another process's namespace: its name has our pid
			}
			err = fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			if i < 2 && strings.Contains(string(out), "File exists") {
				err = fmt.Errorf("%w: %w", errSubnetTaken, err)
			}
			return nil, err
		}
	}
	return h, nil
}

// IPv4 and IPv6 are host i's addresses (0-based).
func (h *Hosts) IPv4(i int) netip.Addr { return h.v4[i] }
func (h *Hosts) IPv6(i int) netip.Addr { return h.v6[i] }

// Listen opens a TCP listener on addr inside the namespace: its socket
// stays there, whichever goroutine then serves it.
func (h *Hosts) Listen(addr netip.AddrPort) (net.Listener, error) {
	type result struct {
		l   net.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The thread enters the namespace and is discarded afterwards
		// (never unlocked), so no other goroutine runs in it.
		runtime.LockOSThread()
		ns, err := os.Open("/var/run/netns/" + h.name)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("entering the test hosts' namespace: %w", err)}
			return
		}
		l, err := net.Listen("tcp", addr.String())
		done <- result{l, err}
	}()
	r := <-done
	return r.l, r.err
}

// Close removes the namespace, and with it the veth pair.
func (h *Hosts) Close() {
	_ = exec.Command("ip", "netns", "del", h.name).Run()
}
