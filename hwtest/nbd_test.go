package hwtest

// A small NBD server (fixed newstyle handshake, simple replies) whose disk
// has a volatile write cache: a write lands in a buffer, reads see it, and
// only NBD_CMD_FLUSH makes the buffered writes durable. PowerCut then does
// what a power failure does to a disk with a volatile cache: writes not
// flushed are lost, or a random subset of them survives, in any order.
//
// Why not a library: github.com/pojntfx/go-nbd, the maintained Go NBD
// server, is not served by the module proxy here (403), and this test
// needs control over exactly the parts a library hides (what a flush
// means, what a power cut keeps, counting flushes). The server does not
// advertise FUA, so QEMU turns a FUA write into a write and a flush.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
)

const (
	nbdMagic          = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic       = 0x49484156454f5054 // "IHAVEOPT"
	nbdRepMagic       = 0x3e889045565a9
	nbdRequestMagic   = 0x25609513
	nbdReplyMagic     = 0x67446698
	nbdFlagFixed      = 1 << 0
	nbdFlagNoZeroes   = 1 << 1
	nbdFlagHasFlags   = 1 << 0
	nbdFlagSendFlush  = 1 << 2
	nbdOptExportName  = 1
	nbdOptAbort       = 2
	nbdOptInfo        = 6
	nbdOptGo          = 7
	nbdRepAck         = 1
	nbdRepInfo        = 3
	nbdRepErrUnsup    = 1<<31 + 1
	nbdRepErrUnknown  = 1<<31 + 6
	nbdInfoExport     = 0
	nbdInfoBlockSize  = 3
	nbdCmdRead        = 0
	nbdCmdWrite       = 1
	nbdCmdDisc        = 2
	nbdCmdFlush       = 3
	nbdEIO            = 5
	nbdEINVAL         = 22
	nbdMaxRequest     = 32 << 20 // QEMU sends at most 32 MiB per request
	sectorSize        = 512
	nbdExportName     = "data"
	nbdMaxOptionBytes = 4096
)

var (
	// errNBDProtocol is a client that broke the protocol.
	errNBDProtocol = errors.New("nbd protocol error")
	// errDiskFrozen is a request after an armed cut tripped.
	errDiskFrozen = errors.New("disk frozen for a power cut")
)

// volatileDisk is a disk image (a host file: what survives power loss)
// plus the writes since the last flush (what does not).
type volatileDisk struct {
	mu       sync.Mutex
	file     *os.File
	size     int64
	pending  []nbdWrite       // writes since the last flush, in arrival order
	latest   map[int64][]byte // sector -> its newest unflushed content
	writes   int              // counters for this power-on
	flushes  int
	flushedB int64
	armed    int           // cut once this many writes are unflushed (0: not armed)
	tripped  chan struct{} // closed when that happens
	frozen   bool          // tripped: the disk serves nothing more
}

// armCut makes the disk freeze, serving nothing more, as soon as n writes
// are in its volatile cache; the returned channel closes then, and the
// caller cuts the power. So the power fails exactly while the cache holds
// writes, which a cut at a random instant rarely hits: the guest flushes
// often.
func (d *volatileDisk) armCut(n int) <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.armed, d.tripped = max(n, 1), make(chan struct{})
	return d.tripped
}

// isFrozen reports whether an armed cut has tripped.
func (d *volatileDisk) isFrozen() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.frozen
}

type nbdWrite struct {
	off  int64
	data []byte
}

func openVolatileDisk(path string, size int64) (*volatileDisk, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open disk image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("size disk image: %w", err)
	}
	return &volatileDisk{file: f, size: size, latest: map[int64][]byte{}}, nil
}

func (d *volatileDisk) readAt(b []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.file.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	for s := off / sectorSize; s*sectorSize < off+int64(len(b)); s++ {
		if c, ok := d.latest[s]; ok {
			lo := max(s*sectorSize, off)
			hi := min((s+1)*sectorSize, off+int64(len(b)))
			copy(b[lo-off:hi-off], c[lo-s*sectorSize:])
		}
	}
	return nil
}

// writeAt buffers a write; a partial sector merges with what reads see.
func (d *volatileDisk) writeAt(b []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.frozen {
		return errDiskFrozen
	}
	d.pending = append(d.pending, nbdWrite{off: off, data: append([]byte(nil), b...)})
	d.writes++
	defer func() {
		if d.armed > 0 && len(d.pending) >= d.armed {
			d.armed, d.frozen = 0, true
			close(d.tripped)
		}
	}()
	for s := off / sectorSize; s*sectorSize < off+int64(len(b)); s++ {
		c, ok := d.latest[s]
		if !ok {
			c = make([]byte, sectorSize)
			if _, err := d.file.ReadAt(c, s*sectorSize); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			d.latest[s] = c
		}
		lo := max(s*sectorSize, off)
		hi := min((s+1)*sectorSize, off+int64(len(b)))
		copy(c[lo-s*sectorSize:], b[lo-off:hi-off])
	}
	return nil
}

// flush makes every buffered write durable.
func (d *volatileDisk) flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.frozen {
		return errDiskFrozen
	}
	d.flushes++
	for _, w := range d.pending {
		if _, err := d.file.WriteAt(w.data, w.off); err != nil {
			return err
		}
		d.flushedB += int64(len(w.data))
	}
	d.pending = d.pending[:0]
	clear(d.latest)
	return nil
}

// powerCut loses the buffered writes. With keep > 0 each one survives
// with that probability, independently of the others (a disk reorders its
// cache), and is applied whole. It returns how many were lost and kept.
func (d *volatileDisk) powerCut(r *rand.Rand, keep float64) (lost, kept int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, w := range d.pending {
		if keep > 0 && r.Float64() < keep {
			if _, err := d.file.WriteAt(w.data, w.off); err != nil {
				return lost, kept, err
			}
			kept++
		} else {
			lost++
		}
	}
	d.pending = d.pending[:0]
	clear(d.latest)
	d.armed, d.frozen = 0, false
	return lost, kept, nil
}

// counters returns and resets the counts of this power-on.
func (d *volatileDisk) counters() (writes, flushes int, flushed int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	writes, flushes, flushed = d.writes, d.flushes, d.flushedB
	d.writes, d.flushes, d.flushedB = 0, 0, 0
	return
}

func (d *volatileDisk) close() error { return d.file.Close() }

// nbdServer serves one volatileDisk on a unix socket.
type nbdServer struct {
	disk *volatileDisk
	ln   net.Listener
	logf func(format string, args ...any)

	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// serveNBD listens on sock; stop ends it.
func serveNBD(sock string, disk *volatileDisk, logf func(string, ...any)) (*nbdServer, error) {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("listen for nbd: %w", err)
	}
	s := &nbdServer{disk: disk, ln: ln, logf: logf, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go func() { // owner: stop
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() { // owner: stop closes c
				defer s.wg.Done()
				if err := s.handle(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, errDiskFrozen) {
					s.logf("nbd: %v", err)
				}
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
		}
	}()
	return s, nil
}

// stop closes the listener and every connection and waits for them.
func (s *nbdServer) stop() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *nbdServer) handle(c net.Conn) error {
	be := binary.BigEndian
	hello := make([]byte, 18)
	be.PutUint64(hello, nbdMagic)
	be.PutUint64(hello[8:], nbdOptMagic)
	be.PutUint16(hello[16:], nbdFlagFixed|nbdFlagNoZeroes)
	if _, err := c.Write(hello); err != nil {
		return err
	}
	var cflags [4]byte
	if _, err := io.ReadFull(c, cflags[:]); err != nil {
		return err
	}
	noZeroes := be.Uint32(cflags[:])&nbdFlagNoZeroes != 0
	txFlags := uint16(nbdFlagHasFlags | nbdFlagSendFlush)

	reply := func(opt, typ uint32, data []byte) error {
		b := make([]byte, 20+len(data))
		be.PutUint64(b, nbdRepMagic)
		be.PutUint32(b[8:], opt)
		be.PutUint32(b[12:], typ)
		be.PutUint32(b[16:], uint32(len(data)))
		copy(b[20:], data)
		_, err := c.Write(b)
		return err
	}
	for { // option haggling
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return err
		}
		if be.Uint64(h[:]) != nbdOptMagic {
			return fmt.Errorf("%w: option magic %#x", errNBDProtocol, be.Uint64(h[:]))
		}
		opt, n := be.Uint32(h[8:]), be.Uint32(h[12:])
		if n > nbdMaxOptionBytes {
			return fmt.Errorf("%w: option %d of %d bytes (limit %d)", errNBDProtocol, opt, n, nbdMaxOptionBytes)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return err
		}
		switch opt {
		case nbdOptExportName:
			if string(data) != nbdExportName {
				return fmt.Errorf("%w: unknown export %q", errNBDProtocol, data)
			}
			b := make([]byte, 10, 134)
			be.PutUint64(b, uint64(s.disk.size))
			be.PutUint16(b[8:], txFlags)
			if !noZeroes {
				b = b[:134]
			}
			if _, err := c.Write(b); err != nil {
				return err
			}
			return s.transmit(c)
		case nbdOptInfo, nbdOptGo:
			if len(data) < 6 || int(be.Uint32(data))+6 > len(data) {
				return fmt.Errorf("%w: short NBD_OPT_GO", errNBDProtocol)
			}
			if name := string(data[4 : 4+be.Uint32(data)]); name != nbdExportName && name != "" {
				if err := reply(opt, nbdRepErrUnknown, nil); err != nil {
					return err
				}
				continue
			}
			info := make([]byte, 12)
			be.PutUint16(info, nbdInfoExport)
			be.PutUint64(info[2:], uint64(s.disk.size))
			be.PutUint16(info[10:], txFlags)
			if err := reply(opt, nbdRepInfo, info); err != nil {
				return err
			}
			bs := make([]byte, 14)
			be.PutUint16(bs, nbdInfoBlockSize)
			be.PutUint32(bs[2:], 1)
			be.PutUint32(bs[6:], 4096)
			be.PutUint32(bs[10:], nbdMaxRequest)
			if err := reply(opt, nbdRepInfo, bs); err != nil {
				return err
			}
			if err := reply(opt, nbdRepAck, nil); err != nil {
				return err
			}
			if opt == nbdOptGo {
				return s.transmit(c)
			}
		case nbdOptAbort:
			reply(opt, nbdRepAck, nil)
			return io.EOF
		default: // structured replies, meta contexts, lists, TLS: not offered
			if err := reply(opt, nbdRepErrUnsup, nil); err != nil {
				return err
			}
		}
	}
}

// transmit serves requests one at a time until the client disconnects.
func (s *nbdServer) transmit(c net.Conn) error {
	be := binary.BigEndian
	var h [28]byte
	buf := make([]byte, 0, 1<<20)
	for {
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return err
		}
		if be.Uint32(h[:]) != nbdRequestMagic {
			return fmt.Errorf("%w: request magic %#x", errNBDProtocol, be.Uint32(h[:]))
		}
		typ, handle := be.Uint16(h[6:]), be.Uint64(h[8:])
		off, n := int64(be.Uint64(h[16:])), be.Uint32(h[24:])
		if typ == nbdCmdRead || typ == nbdCmdWrite {
			if n > nbdMaxRequest {
				return fmt.Errorf("%w: request of %d bytes (limit %d)", errNBDProtocol, n, nbdMaxRequest)
			}
			if cap(buf) < int(n) {
				buf = make([]byte, n)
			}
			buf = buf[:n]
		}
		if s.disk.isFrozen() {
			return errDiskFrozen // no answer: the power is going
		}
		errno := uint32(0)
		inRange := off >= 0 && off+int64(n) <= s.disk.size
		var payload []byte
		switch typ {
		case nbdCmdRead:
			switch {
			case !inRange:
				errno = nbdEINVAL
			case s.disk.readAt(buf, off) != nil:
				errno = nbdEIO
			default:
				payload = buf
			}
		case nbdCmdWrite:
			if _, err := io.ReadFull(c, buf); err != nil {
				return err
			}
			switch {
			case !inRange:
				errno = nbdEINVAL
			default:
				if err := s.disk.writeAt(buf, off); errors.Is(err, errDiskFrozen) {
					return err
				} else if err != nil {
					errno = nbdEIO
				}
				if s.disk.isFrozen() {
					return errDiskFrozen // the write is in the cache, unanswered
				}
			}
		case nbdCmdFlush:
			if err := s.disk.flush(); errors.Is(err, errDiskFrozen) {
				return err
			} else if err != nil {
				s.logf("nbd: flush: %v", err)
				errno = nbdEIO
			}
		case nbdCmdDisc:
			return io.EOF
		default:
			errno = nbdEINVAL
		}
		r := make([]byte, 16, 16+len(payload))
		be.PutUint32(r, nbdReplyMagic)
		be.PutUint32(r[4:], errno)
		be.PutUint64(r[8:], handle)
		if _, err := c.Write(append(r, payload...)); err != nil {
			return err
		}
	}
}
