package tree

import (
	"encoding/binary"
	"math"
	"unicode/utf8"
)

// The fast node decoder. Decoding a node through the CBOR library's
// reflection cost about 3.5 µs (a quarter of the agent's CPU in a no-change
// backup, most of the vault's commit; docs/performance.md). decodeNode reads
// the form the Writer produces (the deterministic encoding: shortest
// heads, integer keys in increasing order, definite lengths) straight into
// a Node, within the node limits. It accepts only a subset of what the
// library accepts, and decodes it to the same Node: anything else (another
// valid form, an error, a limit reached) makes it answer false, and the
// Reader decodes the node the general way (readItem and Unmarshal), which
// also gives every error its message. FuzzFastNode checks both claims.

// fastDec walks one encoded node in b.
type fastDec struct {
	b []byte
	i int
	// Interned owner names: consecutive nodes mostly share them.
	user, group *string
	// Storage for the next node's path and references, empty: set only
	// for a Reader that reuses its node (Reader.Reuse); nil, each node's
	// are its own.
	path []byte
	refs []ChunkRef
}

// head reads a data item's head in its shortest form.
func (d *fastDec) head() (major byte, arg uint64, ok bool) {
	if d.i >= len(d.b) {
		return 0, 0, false
	}
	ib := d.b[d.i]
	major, info := ib>>5, ib&0x1f
	switch {
	case info < 24:
		d.i++
		return major, uint64(info), true
	case info == 24:
		if d.i+2 > len(d.b) || d.b[d.i+1] < 24 {
			return 0, 0, false
		}
		arg = uint64(d.b[d.i+1])
		d.i += 2
	case info == 25:
		if d.i+3 > len(d.b) {
			return 0, 0, false
		}
		arg = uint64(binary.BigEndian.Uint16(d.b[d.i+1:]))
		if arg <= math.MaxUint8 {
			return 0, 0, false
		}
		d.i += 3
	case info == 26:
		if d.i+5 > len(d.b) {
			return 0, 0, false
		}
		arg = uint64(binary.BigEndian.Uint32(d.b[d.i+1:]))
		if arg <= math.MaxUint16 {
			return 0, 0, false
		}
		d.i += 5
	case info == 27:
		if d.i+9 > len(d.b) {
			return 0, 0, false
		}
		arg = binary.BigEndian.Uint64(d.b[d.i+1:])
		if arg <= math.MaxUint32 {
			return 0, 0, false
		}
		d.i += 9
	default:
		return 0, 0, false
	}
	if major == 7 { // floats and simple values: only true and false, one byte
		return 0, 0, false
	}
	return major, arg, true
}

func (d *fastDec) uint(max uint64) (uint64, bool) {
	// A value under 24 is its own one-byte head (every key, most small
	// fields): read without head's general case.
	if d.i < len(d.b) {
		if ib := d.b[d.i]; ib < 24 {
			if uint64(ib) > max {
				return 0, false
			}
			d.i++
			return uint64(ib), true
		}
	}
	major, v, ok := d.head()
	if !ok || major != 0 || v > max {
		return 0, false
	}
	return v, true
}

func (d *fastDec) int64() (int64, bool) {
	major, v, ok := d.head()
	if !ok || v > math.MaxInt64 {
		return 0, false
	}
	switch major {
	case 0:
		return int64(v), true
	case 1:
		return -1 - int64(v), true
	}
	return 0, false
}

func (d *fastDec) bool() (bool, bool) {
	if d.i >= len(d.b) {
		return false, false
	}
	switch d.b[d.i] {
	case 0xf4:
		d.i++
		return false, true
	case 0xf5:
		d.i++
		return true, true
	}
	return false, false
}

// bytes returns a byte string of 1 to max bytes, still in d.b.
func (d *fastDec) bytes(major byte, max uint64) ([]byte, bool) {
	m, n, ok := d.head()
	if !ok || m != major || n == 0 || n > max || n > uint64(len(d.b)-d.i) {
		return nil, false
	}
	s := d.b[d.i : d.i+int(n)]
	d.i += int(n)
	return s, true
}

// copyBytes returns a copy of a byte string of 1 to max bytes.
func (d *fastDec) copyBytes(max uint64) ([]byte, bool) { return d.appendBytes(nil, max) }

// appendBytes appends a byte string of 1 to max bytes to dst.
func (d *fastDec) appendBytes(dst []byte, max uint64) ([]byte, bool) {
	s, ok := d.bytes(2, max)
	if !ok {
		return nil, false
	}
	return append(dst, s...), true
}

// text returns a valid UTF-8 text string of 1 to max bytes; cache, when
// given, keeps the last one so that a repeated name is not allocated again.
func (d *fastDec) text(max uint64, cache **string) (string, bool) {
	s, ok := d.bytes(3, max)
	if !ok || !utf8.Valid(s) {
		return "", false
	}
	if cache != nil {
		if *cache != nil && **cache == string(s) {
			return **cache, true
		}
		v := string(s)
		*cache = &v
		return v, true
	}
	return string(s), true
}

// mapLen reads a map head of 1 to max pairs.
func (d *fastDec) mapLen(max uint64) (int, bool) {
	major, n, ok := d.head()
	if !ok || major != 5 || n == 0 || n > max {
		return 0, false
	}
	return int(n), true
}

// arrayLen reads an array head of 1 to max elements; each element takes at
// least min bytes, so a count the input cannot hold is refused before
// anything is allocated.
func (d *fastDec) arrayLen(max uint64, min int) (int, bool) {
	major, n, ok := d.head()
	if !ok || major != 4 || n == 0 || n > max || n > uint64((len(d.b)-d.i)/min) {
		return 0, false
	}
	return int(n), true
}

// keys reads the n keys of a map in strictly increasing order (so none
// repeats), each at most max, calling field for each one's value.
func (d *fastDec) keys(n int, max uint64, field func(k uint64) bool) bool {
	var last uint64
	for j := 0; j < n; j++ {
		k, ok := d.uint(max)
		if !ok || k <= last || !field(k) {
			return false
		}
		last = k
	}
	return true
}

func (d *fastDec) timespec(t *Timespec) bool {
	n, ok := d.mapLen(2)
	if !ok {
		return false
	}
	// keys without its closure: four of these a node.
	var last uint64
	for range n {
		k, ok := d.uint(2)
		if !ok || k <= last {
			return false
		}
		if k == 1 {
			t.Sec, ok = d.int64()
		} else {
			t.Nsec, ok = d.int64()
		}
		if !ok {
			return false
		}
		last = k
	}
	return true
}

// decodeNode decodes the node b starts with and returns how many bytes it
// took, or false when the node is not in the fast decoder's form or b ends
// before it does.
func (d *fastDec) decodeNode(b []byte, n *Node) (int, bool) {
	d.b, d.i = b, 0
	pairs, ok := d.mapLen(MaxNodeFields)
	if !ok {
		return 0, false
	}
	// keys, inline: a call of its closure for each field cost a tenth
	// of the decoding.
	var last uint64
	for range pairs {
		k, ok := d.uint(26)
		if !ok || k <= last {
			return 0, false
		}
		last = k
		var v uint64
		switch k {
		case 1:
			n.Path, ok = d.appendBytes(d.path, MaxPathLen)
		case 2:
			v, ok = d.uint(math.MaxUint8)
			n.Type = Type(v)
		case 3:
			v, ok = d.uint(math.MaxUint32)
			n.Mode = uint32(v)
		case 4:
			v, ok = d.uint(math.MaxUint32)
			n.UID = uint32(v)
		case 5:
			v, ok = d.uint(math.MaxUint32)
			n.GID = uint32(v)
		case 6:
			n.User, ok = d.text(MaxOwnerLen, &d.user)
		case 7:
			n.Group, ok = d.text(MaxOwnerLen, &d.group)
		case 8:
			n.Size, ok = d.int64()
		case 9:
			ok = d.timespec(&n.Mtime)
		case 10:
			ok = d.timespec(&n.Atime)
		case 11:
			ok = d.timespec(&n.Ctime)
		case 12:
			ok = d.timespec(&n.Btime)
		case 13:
			n.Dev, ok = d.uint(math.MaxUint64)
		case 14:
			n.Ino, ok = d.uint(math.MaxUint64)
		case 15:
			v, ok = d.uint(math.MaxUint32)
			n.Nlink = uint32(v)
		case 16:
			n.Rdev, ok = d.uint(math.MaxUint64)
		case 17:
			n.Target, ok = d.copyBytes(MaxTargetLen)
		case 18:
			n.LinkTo, ok = d.copyBytes(MaxPathLen)
		case 19:
			ok = d.xattrs(n)
		case 20:
			v, ok = d.uint(math.MaxUint32)
			n.Flags = uint32(v)
		case 21:
			n.Sparse, ok = d.bool()
		case 22:
			ok = d.extents(n)
		case 23:
			ok = d.chunks(n)
		case 24:
			n.MountPoint, ok = d.bool()
		case 25:
			v, ok = d.uint(math.MaxUint8)
			n.Status = Status(v)
		case 26:
			n.Err, ok = d.text(MaxErrLen, nil)
		}
		if !ok {
			return 0, false
		}
	}
	return d.i, true
}

func (d *fastDec) chunks(n *Node) bool {
	// A reference takes at least 37 bytes: map head, two keys, a 32-byte
	// string's two-byte head and its bytes, a length.
	cnt, ok := d.arrayLen(MaxChunks, 37)
	if !ok {
		return false
	}
	if cap(d.refs) >= cnt {
		n.Chunks = d.refs[:cnt]
		clear(n.Chunks)
	} else {
		n.Chunks = make([]ChunkRef, cnt)
	}
	for j := range n.Chunks {
		c := &n.Chunks[j]
		pairs, ok := d.mapLen(2)
		if !ok {
			return false
		}
		var last uint64
		for range pairs { // keys, inline: a small file's node has one reference
			k, ok := d.uint(2)
			if !ok || k <= last {
				return false
			}
			last = k
			if k == 1 {
				id, ok := d.bytes(2, 32)
				if !ok || len(id) != 32 {
					return false
				}
				copy(c.ID[:], id)
				continue
			}
			v, ok := d.uint(math.MaxUint32)
			if !ok {
				return false
			}
			c.Len = uint32(v)
		}
	}
	return true
}

func (d *fastDec) extents(n *Node) bool {
	cnt, ok := d.arrayLen(MaxExtents, 3)
	if !ok {
		return false
	}
	n.Extents = make([]Extent, cnt)
	for j := range n.Extents {
		e := &n.Extents[j]
		pairs, ok := d.mapLen(2)
		if !ok || !d.keys(pairs, 2, func(k uint64) bool {
			var ok bool
			if k == 1 {
				e.Off, ok = d.int64()
			} else {
				e.Len, ok = d.int64()
			}
			return ok
		}) {
			return false
		}
	}
	return true
}

func (d *fastDec) xattrs(n *Node) bool {
	cnt, ok := d.arrayLen(MaxXattrs, 4)
	if !ok {
		return false
	}
	n.Xattrs = make([]Xattr, cnt)
	for j := range n.Xattrs {
		x := &n.Xattrs[j]
		pairs, ok := d.mapLen(2)
		if !ok || !d.keys(pairs, 2, func(k uint64) bool {
			var ok bool
			if k == 1 {
				x.Name, ok = d.text(MaxXattrNameLen, nil)
			} else {
				x.Value, ok = d.copyBytes(MaxXattrValueLen)
			}
			return ok
		}) {
			return false
		}
	}
	return true
}
