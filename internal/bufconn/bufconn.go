// Package bufconn buffers the reads of a connection that TLS runs over.
//
// crypto/tls reads about one record (at most 16 KiB) per read of the
// connection under it, so a download of chunks costs one system call per
// 16 KiB on the receiving end; with a buffer under TLS one read takes
// whatever has arrived, up to the buffer's size, and TLS takes its records
// from memory. Nothing changes on the wire.
package bufconn

import (
	"bufio"
	"net"
)

// ReadSize is the buffer a Conn reads into: 256 KiB, what loopback or a
// fast link delivers between two reads of a busy receiver.
const ReadSize = 256 << 10

// Conn is a connection whose reads go through a buffer of ReadSize.
// Everything else is the connection's own.
type Conn struct {
	net.Conn
	r *bufio.Reader
}

// New returns c with its reads buffered.
func New(c net.Conn) *Conn {
	return &Conn{Conn: c, r: bufio.NewReaderSize(c, ReadSize)}
}

// Read reads from the buffer, refilling it with one read of the
// connection when it is empty (a read larger than the buffer goes to the
// connection directly).
func (c *Conn) Read(p []byte) (int, error) { return c.r.Read(p) }

// NetConn returns the connection under the buffer.
func (c *Conn) NetConn() net.Conn { return c.Conn }
