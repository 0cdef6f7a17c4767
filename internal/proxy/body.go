package proxy

import (
	"errors"
	"io"
	"sync/atomic"
)

// callerBody is the caller's request body as the transport reads it. It
// tells a body that broke (bad chunking, a caller that stopped sending)
// from an upstream that failed: a read error, or a read still waiting for
// the caller when the call ended, is the caller's doing.
type callerBody struct {
	io.ReadCloser
	reading atomic.Bool
	failed  atomic.Bool
	// ended is set when the call is over: the transport may still read
	// (it can outlive the handler), and gets an error instead of racing
	// the server for the body.
	ended atomic.Bool
}

func (b *callerBody) Read(p []byte) (int, error) {
	if b.ended.Load() {
		return 0, errCallEnded
	}
	b.reading.Store(true)
	n, err := b.ReadCloser.Read(p)
	// failed before reading ends: broke never reads a read that failed as
	// neither (the call would be judged the caller's leaving, 499, not a
	// body that never came, 400).
	if err != nil && err != io.EOF {
		b.failed.Store(true)
	}
	b.reading.Store(false)
	return n, err
}

// Close does not close the caller's body, which is the server's to close:
// the transport closes what it sends, even when a dial fails before a byte
// was read, and the caller may still be sending (e.g. waiting for a 100
// Continue).
func (b *callerBody) Close() error { return nil }

// end marks the call over.
func (b *callerBody) end() { b.ended.Store(true) }

var errCallEnded = errors.New("the call has ended")

// broke reports whether the body failed or was still awaited from the caller.
func (b *callerBody) broke() bool {
	return b != nil && (b.failed.Load() || b.reading.Load())
}

// awaited reports whether a read is waiting for the caller right now.
func (b *callerBody) awaited() bool {
	return b != nil && b.reading.Load()
}

// idleBody is a streaming response body that keeps its call alive while
// bytes arrive.
type idleBody struct {
	io.ReadCloser
	c *call
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.c.moved(n)
	return n, err
}
