// Package bufconn buffers the reads of a connection that TLS runs over.
//
// crypto/tls reads about one record (at most 16 KiB) per read of the
// connection under it, so a download of chunks costs one system call per
// 16 KiB on the receiving end; with a buffer under TLS one read takes
// whatever has arrived, up to the buffer's size, and TLS takes its records
// from memory. Nothing changes on the wire.
//
// The buffer is held only while it holds bytes: a connection waits for its
// next bytes without one and takes one from a shared pool once they have
// arrived, giving it back when TLS has taken them all. A vault's thousands
// of idle agent connections (long polls) hold no buffer at all.
package bufconn

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// ReadSize is the buffer a Conn reads into: 256 KiB, what loopback or a
// fast link delivers between two reads of a busy receiver.
const ReadSize = 256 << 10

var pool = sync.Pool{New: func() any { return new([ReadSize]byte) }}

// Conn is a connection whose reads go through a buffer of ReadSize.
// Everything else is the connection's own. Reads must not be concurrent
// (TLS reads one at a time).
type Conn struct {
	net.Conn
	rc   syscall.RawConn // nil: the connection has no descriptor (a pipe)
	buf  *[ReadSize]byte // nil while empty
	r, w int             // unread bytes are buf[r:w]
	read *atomic.Uint64  // nil, or counts the bytes read from the connection
}

// New returns c with its reads buffered.
func New(c net.Conn) *Conn {
	bc := &Conn{Conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			bc.rc = rc
		}
	}
	return bc
}

// NewCounting is New, and adds the bytes read from c to read.
func NewCounting(c net.Conn, read *atomic.Uint64) *Conn {
	bc := New(c)
	bc.read = read
	return bc
}

func (c *Conn) count(n int) {
	if c.read != nil && n > 0 {
		c.read.Add(uint64(n))
	}
}

// Read reads from the buffer, refilling it with one read of the
// connection when it is empty (a read larger than the buffer goes to the
// connection directly).
func (c *Conn) Read(p []byte) (int, error) {
	if c.buf == nil {
		if len(p) >= ReadSize {
			n, err := c.Conn.Read(p)
			c.count(n)
			return n, err
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.buf[c.r:c.w])
	c.r += n
	if c.r == c.w {
		pool.Put(c.buf)
		c.buf, c.r, c.w = nil, 0, 0
	}
	return n, nil
}

// fill waits for bytes to arrive and reads what has into a buffer from
// the pool; the buffer is taken only once the descriptor is readable.
func (c *Conn) fill() error {
	if c.rc == nil {
		b := pool.Get().(*[ReadSize]byte)
		n, err := c.Conn.Read(b[:])
		if n == 0 {
			pool.Put(b)
			if err == nil {
				err = io.ErrNoProgress
			}
			return err
		}
		c.buf, c.r, c.w = b, 0, n
		c.count(n)
		return nil // an error comes back with the next read
	}
	var n int
	var rerr error
	err := c.rc.Read(func(fd uintptr) bool {
		b := pool.Get().(*[ReadSize]byte)
		for {
			n, rerr = syscall.Read(int(fd), b[:])
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			pool.Put(b)
			return false // wait until readable (or the deadline)
		}
		if n > 0 {
			c.buf, c.r, c.w = b, 0, n
		} else {
			pool.Put(b)
		}
		return true
	})
	switch {
	case err != nil:
		// The deadline, or a closed connection: as net.Conn reports them.
		return c.opErr(err)
	case rerr != nil:
		return c.opErr(os.NewSyscallError("read", rerr))
	case n <= 0:
		return io.EOF
	}
	c.count(n)
	return nil
}

func (c *Conn) opErr(err error) error {
	return &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Lazy reports whether the connection waits for its bytes without a
// buffer (it reads through its descriptor). Without a descriptor (a
// wrapper that does not offer syscall.Conn, a pipe) it holds a buffer
// while a read waits.
func (c *Conn) Lazy() bool { return c.rc != nil }

// Buffered reports whether the connection holds a buffer (bytes read
// from the connection that TLS has not taken yet).
func (c *Conn) Buffered() bool { return c.buf != nil }

// NetConn returns the connection under the buffer.
func (c *Conn) NetConn() net.Conn { return c.Conn }
