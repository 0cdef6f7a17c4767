//go:build !unix

package proxy

// peerClosed cannot peek here: a connection the upstream closed while idle
// is found when it is used (a request that may be replayed goes again).
func (pc *http1Conn) peerClosed() bool { return false }
