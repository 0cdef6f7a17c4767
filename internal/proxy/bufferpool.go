package proxy

import (
	"net/http/httputil"
	"sync"
)

// NewBufferPool returns a pool of 32 KiB buffers for copying response
// bodies, in the form httputil.ReverseProxy takes; without one every
// response allocates a buffer. A Proxy's forward path and its upgrades
// share one; the benchmarks' bare baselines use one too.
func NewBufferPool() httputil.BufferPool { return &bufferPool{} }

type bufferPool struct{ pool sync.Pool }

func (b *bufferPool) Get() []byte {
	if buf, ok := b.pool.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, 32*1024)
}

func (b *bufferPool) Put(buf []byte) { b.pool.Put(&buf) }
