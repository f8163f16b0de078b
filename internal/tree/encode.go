package tree

import (
	"encoding/binary"
)

// appendNode appends n's encoding to b: the same bytes as Marshal(n) (the
// CBOR library's core deterministic encoding of Node, omitempty fields
// left out), written without reflection. TestAppendNodeMatchesLibrary and
// FuzzAppendNode hold it to the library's bytes; a field added to Node
// must be added here.
func appendNode(b []byte, n *Node) []byte {
	pairs := uint64(2 + 4) // path, type, the four times
	count := func(nonzero bool) {
		if nonzero {
			pairs++
		}
	}
	count(n.Mode != 0)
	count(n.UID != 0)
	count(n.GID != 0)
	count(n.User != "")
	count(n.Group != "")
	count(n.Size != 0)
	count(n.Dev != 0)
	count(n.Ino != 0)
	count(n.Nlink != 0)
	count(n.Rdev != 0)
	count(len(n.Target) != 0)
	count(len(n.LinkTo) != 0)
	count(len(n.Xattrs) != 0)
	count(n.Flags != 0)
	count(n.Sparse)
	count(len(n.Extents) != 0)
	count(len(n.Chunks) != 0)
	count(n.MountPoint)
	count(n.Status != 0)
	count(n.Err != "")
	b = appendHead(b, 5, pairs)

	b = append(b, 1)
	b = appendBytes(b, n.Path)
	b = append(b, 2)
	b = appendHead(b, 0, uint64(n.Type))
	if n.Mode != 0 {
		b = append(b, 3)
		b = appendHead(b, 0, uint64(n.Mode))
	}
	if n.UID != 0 {
		b = append(b, 4)
		b = appendHead(b, 0, uint64(n.UID))
	}
	if n.GID != 0 {
		b = append(b, 5)
		b = appendHead(b, 0, uint64(n.GID))
	}
	if n.User != "" {
		b = append(b, 6)
		b = appendText(b, n.User)
	}
	if n.Group != "" {
		b = append(b, 7)
		b = appendText(b, n.Group)
	}
	if n.Size != 0 {
		b = append(b, 8)
		b = appendInt(b, n.Size)
	}
	b = append(b, 9)
	b = appendTimespec(b, n.Mtime)
	b = append(b, 10)
	b = appendTimespec(b, n.Atime)
	b = append(b, 11)
	b = appendTimespec(b, n.Ctime)
	b = append(b, 12)
	b = appendTimespec(b, n.Btime)
	if n.Dev != 0 {
		b = append(b, 13)
		b = appendHead(b, 0, n.Dev)
	}
	if n.Ino != 0 {
		b = append(b, 14)
		b = appendHead(b, 0, n.Ino)
	}
	if n.Nlink != 0 {
		b = append(b, 15)
		b = appendHead(b, 0, uint64(n.Nlink))
	}
	if n.Rdev != 0 {
		b = append(b, 16)
		b = appendHead(b, 0, n.Rdev)
	}
	if len(n.Target) != 0 {
		b = append(b, 17)
		b = appendBytes(b, n.Target)
	}
	if len(n.LinkTo) != 0 {
		b = append(b, 18)
		b = appendBytes(b, n.LinkTo)
	}
	if len(n.Xattrs) != 0 {
		b = append(b, 19)
		b = appendHead(b, 4, uint64(len(n.Xattrs)))
		for _, x := range n.Xattrs {
			b = append(b, 0xa2, 1)
			b = appendText(b, x.Name)
			b = append(b, 2)
			b = appendBytes(b, x.Value)
		}
	}
	if n.Flags != 0 {
		b = append(b, 20)
		b = appendHead(b, 0, uint64(n.Flags))
	}
	if n.Sparse {
		b = append(b, 21, 0xf5)
	}
	if len(n.Extents) != 0 {
		b = append(b, 22)
		b = appendHead(b, 4, uint64(len(n.Extents)))
		for _, e := range n.Extents {
			b = append(b, 0xa2, 1)
			b = appendInt(b, e.Off)
			b = append(b, 2)
			b = appendInt(b, e.Len)
		}
	}
	if len(n.Chunks) != 0 {
		b = append(b, 23)
		b = appendHead(b, 4, uint64(len(n.Chunks)))
		for _, c := range n.Chunks {
			b = append(b, 0xa2, 1, 0x58, 32)
			b = append(b, c.ID[:]...)
			b = append(b, 2)
			b = appendHead(b, 0, uint64(c.Len))
		}
	}
	if n.MountPoint {
		b = append(b, 0x18, 24, 0xf5)
	}
	if n.Status != 0 {
		b = append(b, 0x18, 25)
		b = appendHead(b, 0, uint64(n.Status))
	}
	if n.Err != "" {
		b = append(b, 0x18, 26)
		b = appendText(b, n.Err)
	}
	return b
}

// appendHead appends a data item's head in its shortest form.
func appendHead(b []byte, major byte, arg uint64) []byte {
	m := major << 5
	switch {
	case arg < 24:
		return append(b, m|byte(arg))
	case arg <= 0xff:
		return append(b, m|24, byte(arg))
	case arg <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(arg))
	case arg <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(arg))
	}
	return binary.BigEndian.AppendUint64(append(b, m|27), arg)
}

func appendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return appendHead(b, 0, uint64(v))
	}
	return appendHead(b, 1, uint64(-1-v))
}

// appendBytes appends a byte string; nil is null, as the library writes a
// nil slice that is not omitted.
func appendBytes(b, s []byte) []byte {
	if s == nil {
		return append(b, 0xf6)
	}
	return append(appendHead(b, 2, uint64(len(s))), s...)
}

func appendText(b []byte, s string) []byte {
	return append(appendHead(b, 3, uint64(len(s))), s...)
}

func appendTimespec(b []byte, t Timespec) []byte {
	b = append(b, 0xa2, 1)
	b = appendInt(b, t.Sec)
	b = append(b, 2)
	return appendInt(b, t.Nsec)
}
