package proxy

import (
	"fmt"
	"net"
	"syscall"
)

// errDialRefused is why the dial guard refused an address.
type errDialRefused struct {
	ip  net.IP
	why string
}

func (e *errDialRefused) Error() string {
	return fmt.Sprintf("upstream address %s refused: %s", e.ip, e.why)
}

// dialGuard refuses the addresses a Service upstream must never reach:
// loopback (the manager's own REST API and metrics), link-local (cloud
// metadata endpoints), unspecified and multicast addresses, and the
// manager's own addresses. A Service name that resolves there (through DNS
// the resource author does not control, or by a trick) is refused at the
// dial, whatever the name.
func dialGuard(own []net.IP) func(network, address string, c syscall.RawConn) error {
	return func(_, address string, _ syscall.RawConn) error {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return err
		}
		ip := net.ParseIP(host)
		if ip == nil {
			return &errDialRefused{why: "not an IP address"}
		}
		if why := refusedAddress(ip, own); why != "" {
			return &errDialRefused{ip: ip, why: why}
		}
		return nil
	}
}

func refusedAddress(ip net.IP, own []net.IP) string {
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "link-local"
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsMulticast():
		return "multicast"
	}
	for _, o := range own {
		if o.Equal(ip) {
			return "the manager's own address"
		}
	}
	return ""
}

// ownAddresses lists the addresses of this machine's (this pod's) interfaces.
func ownAddresses() []net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var ips []net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ips = append(ips, n.IP)
		}
	}
	return ips
}
