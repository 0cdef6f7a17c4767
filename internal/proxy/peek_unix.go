//go:build unix

package proxy

import (
	"errors"
	"syscall"
)

// peerClosed reports whether an idle connection is no longer usable: the
// upstream closed it (or reset it), or sent bytes nobody asked for. One
// non-blocking peek, where http.Transport keeps a goroutine reading every
// idle connection to know the same.
func (pc *http1Conn) peerClosed() bool {
	sc, ok := pc.conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	err = raw.Read(func(fd uintptr) bool {
		// Without an error, a byte or the end of the stream is there.
		_, _, rerr := syscall.Recvfrom(int(fd), pc.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = rerr == nil || !errors.Is(rerr, syscall.EAGAIN)
		return true
	})
	return closed || err != nil
}
