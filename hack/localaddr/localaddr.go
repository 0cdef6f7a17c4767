// Package localaddr hands out free loopback addresses for the processes the
// harnesses start (hack/bench-scale, hack/soak).
package localaddr

import "net"

// Free returns a loopback address ("127.0.0.1:port") that was free when
// asked: the port is the kernel's choice, released for the caller to bind.
func Free() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}
