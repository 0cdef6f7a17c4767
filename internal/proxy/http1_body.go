package proxy

import (
	"compress/gzip"
	"errors"
	"io"
	"time"
)

// http1Body is an answer's body: read to its end, it gives the connection
// back (keep: the answer allows it); closed before, it closes it.
type http1Body struct {
	io.ReadCloser
	pc       *http1Conn
	keep     bool
	released bool
}

func (b *http1Body) Read(p []byte) (int, error) {
	if b.released {
		return 0, io.EOF
	}
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.released = true
		b.pc.release(b.keep && err == io.EOF)
	}
	return n, err
}

func (b *http1Body) Close() error {
	if !b.released {
		b.released = true
		b.pc.close()
	}
	return nil
}

// continueBody holds a request body back until the upstream says 100
// Continue, answers without it, or ExpectContinueTimeout passes. The
// headers are flushed before the body's first read (net/http flushes them
// for any body not in memory).
type continueBody struct {
	io.ReadCloser
	continued <-chan bool
	decided   bool
}

func (b *continueBody) Read(p []byte) (int, error) {
	if !b.decided {
		b.decided = true
		t := time.NewTimer(ExpectContinueTimeout)
		defer t.Stop()
		select {
		case send := <-b.continued:
			if !send {
				return 0, errBodyNotSent
			}
		case <-t.C:
		}
	}
	return b.ReadCloser.Read(p)
}

var errBodyNotSent = errors.New("the upstream answered before asking for the body")

// upgradedConn is a switched connection, both ways, as the transport hands
// it to ReverseProxy.
type upgradedConn struct{ pc *http1Conn }

func (u *upgradedConn) Read(p []byte) (int, error) {
	if u.pc.br.Buffered() > 0 {
		return u.pc.br.Read(p)
	}
	return u.pc.conn.Read(p)
}
func (u *upgradedConn) Write(p []byte) (int, error) { return u.pc.conn.Write(p) }
func (u *upgradedConn) Close() error {
	u.pc.close()
	return nil
}

// gzipBody decompresses an answer the client asked gzip for, as the
// transport does.
type gzipBody struct {
	body io.ReadCloser
	zr   *gzip.Reader
	err  error
}

func (g *gzipBody) Read(p []byte) (int, error) {
	if g.zr == nil && g.err == nil {
		g.zr, g.err = gzip.NewReader(g.body)
	}
	if g.err != nil {
		return 0, g.err
	}
	return g.zr.Read(p)
}

func (g *gzipBody) Close() error { return g.body.Close() }
