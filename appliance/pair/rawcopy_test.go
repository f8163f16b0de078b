package pair

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"vaultnode/appliance/pki"
	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// startPair starts leader a and data member b, joined.
func startPair(t *testing.T) (*dataMember, *dataMember) {
	t.Helper()
	ca, err := pki.LoadOrCreate(t.TempDir(), testStart)
	if err != nil {
		t.Fatal(err)
	}
	a := startLeader(t, ca, "a")
	b := startData(t, ca, "b", t.TempDir(), "")
	join(t, a, Member{ID: "b", Raft: b.addr, Agent: "agent-b"})
	t.Cleanup(func() { b.stop(t); a.stop(t) })
	return a, b
}

// TestRawCopy: copies and lack questions go over a raw copy stream, and
// a connection serves several requests.
func TestRawCopy(t *testing.T) {
	a, b := startPair(t)
	ctx := context.Background()
	es, ids := entries(t, 5)
	for _, e := range es[:3] {
		if err := copyTo(ctx, a, b, "acme", 0, e.Data); err != nil {
			t.Fatal(err)
		}
	}
	cc, err := a.node.copies.get(ctx, b.addr)
	if err != nil {
		t.Fatal(err)
	}
	if cc.sw == nil || cc.sr.seq < 3 {
		t.Fatalf("the copies did not go over one raw stream (raw %v)", cc.sw != nil)
	}
	a.node.copies.put(cc)
	bm, err := a.node.copies.lack(ctx, "b", b.addr, "acme", 0, bytes.Join([][]byte{ids[0][:], ids[3][:], ids[4][:]}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if bm[0] != 0b110 {
		t.Fatalf("lack bitmap %08b, want 110", bm[0])
	}
}

// TestEntriesAddCounts: add returns how many entries it sent, on the raw
// stream and on 'C', and refuses a buffer whose last entry is cut off
// before sending any of it.
func TestEntriesAddCounts(t *testing.T) {
	a, b := startPair(t)
	ctx := context.Background()
	es, _ := entries(t, 4)
	older := &copyPool{conf: a.node.cfg.TLS, idle: map[string][]*copyConn{}}
	defer older.close()
	for _, tc := range []struct {
		name string
		pool *copyPool
		raw  bool
	}{{"raw", a.node.copies, true}, {"C", older, false}} {
		q, err := tc.pool.openEntries(ctx, "b", b.addr, "acme", 0)
		if err != nil {
			t.Fatal(err)
		}
		if (q.cc.sw != nil) != tc.raw {
			t.Fatalf("%s: raw stream %v", tc.name, q.cc.sw != nil)
		}
		all := bytes.Join([][]byte{es[0].Data, es[1].Data, es[2].Data}, nil)
		if n, err := q.add(all); err != nil || n != 3 {
			t.Fatalf("%s: add of 3 entries: %d, %v", tc.name, n, err)
		}
		cut := bytes.Join([][]byte{es[3].Data, es[0].Data[:len(es[0].Data)-1]}, nil)
		if n, err := q.add(cut); !errors.Is(err, ErrCopyStream) || n != 0 {
			t.Fatalf("%s: add of a cut entry: %d, %v; want ErrCopyStream", tc.name, n, err)
		}
		q.abort()
	}
}

// TestRawSwitchReadAhead: the switch from TLS to the raw stream holds
// when raw bytes arrive in the same read as the last TLS record, on
// either end (TLS must not read them ahead into its own buffer).
func TestRawSwitchReadAhead(t *testing.T) {
	a, b := startPair(t)
	_, ids := entries(t, 2)

	t.Run("member", func(t *testing.T) {
		// A dialer that does not wait for the answer: its 'D' and a
		// sealed lack request go out in one write.
		raw, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		rr := &recordReader{r: bufio.NewReader(raw)}
		bc := &bufConn{Conn: raw, r: rr}
		tc := tls.Client(bc, a.node.cfg.TLS)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		toMember, toLeader, err := rawKeys(tc.ConnectionState())
		if err != nil {
			t.Fatal(err)
		}
		bc.w = bufio.NewWriter(raw)
		if _, err := tc.Write([]byte{streamRawCopy}); err != nil {
			t.Fatal(err)
		}
		sw := &sealedWriter{w: bc.w, aead: toMember}
		cc := &copyConn{sw: sw, bw: bc.w}
		cc.writeRequest(copyOpLack, "acme", 0)
		sw.Write([]byte{2, 0, 0, 0})
		sw.Write(ids[0][:])
		sw.Write(ids[1][:])
		if err := sw.Flush(); err != nil {
			t.Fatal(err)
		}
		var ack [1]byte
		if _, err := io.ReadFull(tc, ack[:]); err != nil || ack[0] != streamRawCopy {
			t.Fatalf("the member's answer to 'D': %q, %v", ack, err)
		}
		cc.conn, cc.sr = raw, &sealedReader{r: rr.r, aead: toLeader}
		bm := make([]byte, 2)
		if _, err := io.ReadFull(cc.sr, bm); err != nil || bm[0] != answerOK || bm[1] != 0b11 {
			t.Fatalf("lack read ahead with the switch: %q, %v", bm, err)
		}
	})

	t.Run("leader", func(t *testing.T) {
		// A member that sends a sealed answer right behind its 'D', in
		// one write.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		done := make(chan error, 1)
		go func() { // owner: the subtest (waits on done)
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			bc := &bufConn{Conn: c, r: bufio.NewReader(c)}
			tc := tls.Server(bc, b.node.cfg.TLS)
			var k [1]byte
			if _, err := io.ReadFull(tc, k[:]); err != nil {
				done <- err
				return
			}
			_, toLeader, err := rawKeys(tc.ConnectionState())
			if err != nil {
				done <- err
				return
			}
			bc.w = bufio.NewWriter(c)
			tc.Write([]byte{streamRawCopy})
			sw := &sealedWriter{w: bc.w, aead: toLeader}
			writeError(sw, errors.New("right behind the switch"))
			done <- nil
			io.Copy(io.Discard, c)
		}()
		cc, err := dialRaw(context.Background(), ln.Addr().String(), 5*time.Second, a.node.cfg.TLS)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.conn.Close()
		var me *memberError
		if err := cc.readAnswer(nil); !errors.As(err, &me) || !strings.Contains(me.msg, "right behind") {
			t.Fatalf("an answer read ahead with the switch: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// TestRawFallback: a member that does not know 'D' (an older version:
// it closes the connection at an unknown stream kind) gets its copies
// over 'C'; a leader that does not ask for 'D' (older) still copies to a
// member that knows it.
func TestRawFallback(t *testing.T) {
	a, b := startPair(t)
	ctx := context.Background()
	// The older member's mux: 'C' served, any other kind closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	defer a.node.copies.close() // the older member serves each idle connection until it closes
	wg.Add(1)
	go func() { // owner: the test (closes ln, waits)
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				tc := tls.Server(c, b.node.cfg.TLS)
				var k [1]byte
				if _, err := io.ReadFull(tc, k[:]); err != nil || k[0] != streamCopy {
					c.Close()
					return
				}
				b.rep.ServeCopy(tc)
			}()
		}
	}()
	es, ids := entries(t, 4)
	old := ln.Addr().String()
	for i, addr := range []string{old, old} {
		q, err := a.node.copies.openEntries(ctx, "b", addr, "acme", 0)
		if err != nil {
			t.Fatal(err)
		}
		if q.cc.sw != nil {
			t.Fatal("a raw stream to a member that does not know it")
		}
		if _, err := q.add(es[i].Data); err != nil {
			t.Fatal(err)
		}
		if err := q.commit(); err != nil {
			t.Fatal(err)
		}
		if err := q.end(); err != nil {
			t.Fatalf("copy to the older member: %v", err)
		}
	}
	if a.node.copies.noRaw[old].IsZero() {
		t.Fatal("the refusal of 'D' was not remembered")
	}
	older := &copyPool{conf: a.node.cfg.TLS, idle: map[string][]*copyConn{}}
	q, err := older.openEntries(ctx, "b", b.addr, "acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	if q.cc.sw != nil {
		t.Fatal("the older leader's pool dialed 'D'")
	}
	q.add(es[2].Data)
	q.commit()
	if err := q.end(); err != nil {
		t.Fatalf("copy from an older leader: %v", err)
	}
	older.close()
	if err := copyTo(ctx, a, b, "acme", 0, es[3].Data); err != nil {
		t.Fatal(err)
	}
	if !hasAll(t, b.st, ids) {
		t.Fatal("b lacks copies")
	}
}

// wireProxy sits on the wire between a leader and a member: it passes
// the TLS records up to the dialer's stream kind (the first application
// record of 18 bytes: one byte sealed), then reads the leader's raw
// stream as units, a sealed record and the entry bodies that follow it,
// and changes them as edit says. Which records carry bodies, and how
// long they are, is the test's: records of at least 89 bytes carry one
// entry, of the next length in bodies.
type wireProxy struct {
	ln     net.Listener
	target string
	bodies []int
	edit   func(i int, u []byte, out func([]byte)) bool // false: cut the connection
	units  int
	mu     sync.Mutex
	wg     sync.WaitGroup
}

func newWireProxy(t *testing.T, target string) *wireProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &wireProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.serve() // owner: the test (close)
	t.Cleanup(p.close)
	return p
}

func (p *wireProxy) close() {
	p.ln.Close()
	p.wg.Wait()
}

func (p *wireProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		m, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			io.Copy(c, m)
			c.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.leaderToMember(m, c)
			m.Close()
			c.Close()
		}()
	}
}

func (p *wireProxy) leaderToMember(dst, src net.Conn) {
	r := bufio.NewReader(src)
	for {
		var h [5]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return
		}
		rec := make([]byte, binary.BigEndian.Uint16(h[3:]))
		if _, err := io.ReadFull(r, rec); err != nil {
			return
		}
		dst.Write(append(h[:], rec...))
		if h[0] == 23 && len(rec) == 18 {
			break
		}
	}
	p.mu.Lock()
	bodies := append([]int(nil), p.bodies...)
	p.mu.Unlock()
	out := func(u []byte) { dst.Write(u) }
	for i := 0; ; i++ {
		var l [4]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return
		}
		u := make([]byte, 4+binary.LittleEndian.Uint32(l[:]))
		copy(u, l[:])
		if _, err := io.ReadFull(r, u[4:]); err != nil {
			return
		}
		if len(u)-4 >= 89 && len(bodies) > 0 {
			at := len(u)
			u = append(u, make([]byte, bodies[0])...)
			bodies = bodies[1:]
			if _, err := io.ReadFull(r, u[at:]); err != nil {
				return
			}
		}
		p.mu.Lock()
		p.units++
		edit := p.edit
		p.mu.Unlock()
		if edit == nil {
			out(u)
		} else if !edit(i, u, out) {
			return
		}
	}
}

// TestRawWireTamper: a raw stream altered on the wire (a bit of a body
// or of a sealed header flipped, records reordered, replayed, dropped, a
// body spliced from an earlier stream, the stream cut) is refused by the
// member, which stores nothing of the bad frame and keeps what it had
// acknowledged before.
func TestRawWireTamper(t *testing.T) {
	a, b := startPair(t)
	ctx := context.Background()
	proxy := newWireProxy(t, b.addr)
	aead := pack.NewSealer([32]byte{7})

	// The leader's units on the wire: 0 request head + e0, 1 commit,
	// 2 e1, 3 e2, 4 commit, 5 end.
	send := func(es []store.Entry) (acked bool, err error) {
		pool := newCopyPool(a.node.cfg.TLS)
		defer pool.close()
		proxy.mu.Lock()
		proxy.bodies = []int{int(es[0].Header.BodyLen), int(es[1].Header.BodyLen), int(es[2].Header.BodyLen)}
		proxy.mu.Unlock()
		q, err := pool.openEntries(ctx, "b", proxy.ln.Addr().String(), "acme", 0)
		if err != nil {
			return false, err
		}
		if q.cc.sw == nil {
			t.Fatal("no raw stream through the proxy")
		}
		defer q.abort()
		if _, err := q.add(es[0].Data); err != nil {
			return false, err
		}
		if err := q.commit(); err != nil {
			return false, err
		}
		if err := q.wait(); err != nil {
			return false, err
		}
		for _, e := range es[1:] {
			if _, err := q.add(e.Data); err != nil {
				return true, err
			}
		}
		if err := q.commit(); err != nil {
			return true, err
		}
		return true, q.end()
	}
	mkEntries := func() ([]store.Entry, [][32]byte) {
		var es []store.Entry
		var ids [][32]byte
		for i := range 3 {
			e, id := entries(t, 1+i)
			es, ids = append(es, e[i]), append(ids, id[i])
		}
		return es, ids
	}

	es, ids := mkEntries()
	if _, err := send(es); err != nil || !hasAll(t, b.st, ids) || proxy.units < 5 {
		t.Fatalf("untouched through the proxy: %v (%d units seen)", err, proxy.units)
	}
	// A body of e1 (unit 2) as sealed once, kept for the splice.
	var e1Body []byte
	cases := []struct {
		name string
		edit func(i int, u []byte, out func([]byte)) bool
	}{
		{"body bit", func(i int, u []byte, out func([]byte)) bool {
			if i == 2 {
				u[len(u)-100] ^= 1
			}
			out(u)
			return true
		}},
		{"tag bit", func(i int, u []byte, out func([]byte)) bool {
			if i == 2 {
				u[len(u)-3] ^= 1
			}
			out(u)
			return true
		}},
		{"header bit", func(i int, u []byte, out func([]byte)) bool {
			if i == 2 {
				u[4+10] ^= 1
			}
			out(u)
			return true
		}},
		{"length", func(i int, u []byte, out func([]byte)) bool {
			if i == 2 {
				u[0]++
			}
			out(u)
			return true
		}},
		{"reorder", func(i int, u []byte, out func([]byte)) bool {
			switch i {
			case 2:
				e1Body = bytes.Clone(u)
			case 3:
				out(u)
				out(e1Body)
			default:
				out(u)
			}
			return true
		}},
		{"replay", func(i int, u []byte, out func([]byte)) bool {
			out(u)
			if i == 2 {
				out(u)
			}
			return true
		}},
		{"drop", func(i int, u []byte, out func([]byte)) bool {
			if i != 2 {
				out(u)
			}
			return true
		}},
		{"cut", func(i int, u []byte, out func([]byte)) bool {
			if i == 3 {
				return false
			}
			out(u)
			return true
		}},
	}
	for _, c := range cases {
		es, ids := mkEntries()
		proxy.mu.Lock()
		proxy.edit = c.edit
		proxy.mu.Unlock()
		acked, err := send(es)
		if err == nil {
			t.Fatalf("%s: the copy was taken", c.name)
		}
		if !acked || !hasAll(t, b.st, ids[:1]) {
			t.Fatalf("%s: the part acknowledged before (acked %v) is not on the member: %v", c.name, acked, err)
		}
		if n := stored(t, b.st, ids[1:]); n != 0 {
			t.Fatalf("%s: the member stored %d entries of the altered part (%v)", c.name, n, err)
		}
		var me *memberError
		if c.name != "cut" && !errors.As(err, &me) {
			t.Fatalf("%s: %v, want the member's refusal", c.name, err)
		}
		t.Logf("%s: %v", c.name, err)
	}

	// A splice: e1 sealed again (same header, another nonce: another
	// tag), its body on the wire replaced by the first sealing's, which
	// the company's key alone would take.
	es, ids = mkEntries()
	h := es[1].Header
	plain, err := pack.OpenBody(nil, aead, &h, es[1].Data[pack.EntryHeaderSize:])
	if err != nil {
		t.Fatal(err)
	}
	first := es[1].Data[pack.EntryHeaderSize:]
	again := pack.AppendEntry(nil, aead, &h, plain)
	if !bytes.Equal(again[:pack.EntryHeaderSize], es[1].Data[:pack.EntryHeaderSize]) {
		t.Fatal("the entry sealed again has another header")
	}
	es[1].Data = again
	proxy.mu.Lock()
	proxy.edit = func(i int, u []byte, out func([]byte)) bool {
		if i == 2 {
			copy(u[len(u)-len(first):], first)
		}
		out(u)
		return true
	}
	proxy.mu.Unlock()
	_, err = send(es)
	var me *memberError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "tag differs") {
		t.Fatalf("splice: %v, want the member's refusal naming the tag", err)
	}
	if n := stored(t, b.st, ids[1:]); n != 0 {
		t.Fatalf("splice: the member stored %d entries of the altered part", n)
	}
}

// FuzzRawFrame: whatever an authenticated record lists (the member
// trusts the leader's session, not its sanity) and whatever bytes follow
// it, the member's reading of a raw entries frame stays within its
// bounds and fails with an error, never a panic.
func FuzzRawFrame(f *testing.F) {
	es, _ := entries(&testing.T{}, 2)
	seed := []byte{2, 0, 0, 0}
	var bodies []byte
	for _, e := range es {
		body := e.Data[pack.EntryHeaderSize:]
		seed = append(append(seed, e.Data[:pack.EntryHeaderSize]...), body[len(body)-tagSize:]...)
		bodies = append(bodies, body...)
	}
	f.Add(seed, bodies)
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f}, []byte{})
	f.Fuzz(func(t *testing.T, meta, raw []byte) {
		if len(meta) > maxRawRecord {
			return
		}
		key, _, err := rawKeysFromSecret([32]byte{1})
		if err != nil {
			t.Fatal(err)
		}
		var wire bytes.Buffer
		bw := bufio.NewWriter(&wire)
		sw := &sealedWriter{w: bw, aead: key}
		sw.Write(meta)
		if err := sw.Flush(); err != nil {
			t.Fatal(err)
		}
		wire.Write(raw)
		br := bufio.NewReader(&wire)
		sr := &sealedReader{r: br, aead: key}
		var rf rawFrame
		n, err := rf.head(sr)
		if err != nil {
			return
		}
		if n > MaxCopyFrame || len(rf.hs) > maxFrameEntries {
			t.Fatalf("a frame of %d bytes and %d entries passed its bounds", n, len(rf.hs))
		}
		frame := make([]byte, n)
		if err := rf.body(br, br, frame); err != nil {
			return
		}
		for off, i := 0, 0; off < len(frame); i++ {
			h, err := pack.ParseEntryHeader(frame[off:])
			if err != nil || h != rf.hs[i] {
				t.Fatalf("entry %d laid out wrong: %v", i, err)
			}
			off += pack.EntryHeaderSize + int(h.BodyLen)
		}
	})
}

// rawKeysFromSecret is an AEAD of a fixed key, for tests without a TLS
// session.
func rawKeysFromSecret(k [32]byte) (cipher.AEAD, cipher.AEAD, error) {
	b, err := aes.NewCipher(k[:])
	if err != nil {
		return nil, nil, err
	}
	a, err := cipher.NewGCM(b)
	return a, a, err
}
