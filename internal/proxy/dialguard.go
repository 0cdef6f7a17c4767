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
// loopback (the manager's own REST API and metrics), link-local and the
// cloud metadata endpoints outside it, unspecified and multicast addresses,
// the manager's own addresses, any of them wrapped in NAT64, and the ranges
// in deny (--upstream-deny-cidrs, and the API server's own addresses). A
// Service name that resolves there (through DNS the resource author does
// not control, or by a trick) is refused at the dial, whatever the name.
func dialGuard(own []net.IP, deny []*net.IPNet) func(network, address string, c syscall.RawConn) error {
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
		for _, candidate := range []net.IP{ip, nat64Embedded(ip)} {
			for _, n := range deny {
				if candidate != nil && n.Contains(candidate) {
					return &errDialRefused{ip: ip, why: "denied range " + n.String()}
				}
			}
		}
		return nil
	}
}

// metadataAddresses are cloud metadata and credential endpoints outside the
// link-local ranges: AWS's IPv6 instance metadata, EKS Pod Identity, and
// Alibaba Cloud's metadata.
var metadataAddresses = []net.IP{
	net.ParseIP("fd00:ec2::254"), net.ParseIP("fd00:ec2::23"), net.ParseIP("100.100.100.200"),
}

// nat64Prefixes translate an IPv4 address in their last 32 bits: the
// well-known prefix (RFC 6052) and the local-use one (RFC 8215).
var nat64Prefixes = []*net.IPNet{
	{IP: net.ParseIP("64:ff9b::"), Mask: net.CIDRMask(96, 128)},
	{IP: net.ParseIP("64:ff9b:1::"), Mask: net.CIDRMask(48, 128)},
}

// nat64Embedded returns the IPv4 address a NAT64 address reaches, or nil.
func nat64Embedded(ip net.IP) net.IP {
	if ip.To4() != nil {
		return nil
	}
	for _, p := range nat64Prefixes {
		if p.Contains(ip) {
			return net.IPv4(ip[12], ip[13], ip[14], ip[15])
		}
	}
	return nil
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
	for _, m := range metadataAddresses {
		if m.Equal(ip) {
			return "a cloud metadata endpoint"
		}
	}
	for _, o := range own {
		if o.Equal(ip) {
			return "the manager's own address"
		}
	}
	if v4 := nat64Embedded(ip); v4 != nil {
		if why := refusedAddress(v4, own); why != "" {
			return "NAT64 of " + v4.String() + ": " + why
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
