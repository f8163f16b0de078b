package tree

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"vaultnode/internal/limit"
)

// The CBOR library's stream decoder keeps reading until it holds a whole
// data item, however long the item says it is, and only then checks its
// limits; it has no limit on the length of a string at all. readItem frames
// one item itself, head by head, and refuses a declared length or count
// over the limits before it reads or allocates the bytes. Only then does the
// library decode the item, from a slice of known, bounded length.

// fieldLimit bounds a string's length or, when array is set, an array's
// element count.
type fieldLimit struct {
	limit, what string
	max         uint64
	array       bool
}

// itemLimits bound one CBOR data item.
type itemLimits struct {
	item   uint64 // bytes of the whole item
	str    uint64 // bytes of any one byte or text string
	array  uint64 // elements of any one array
	pairs  uint64 // pairs of any one map
	depth  int    // nesting of arrays and maps
	fields map[uint64]fieldLimit
	// fields bounds the values of the outermost map by integer key: a
	// string's length or an array's element count.
}

// errMalformed is wrapped by readItem's errors that are not limits.
var errMalformed = errors.New("malformed CBOR")

// readItem appends one complete CBOR data item read from r to buf[:0] and
// returns it; io.EOF when r ends before the item's first byte. Indefinite
// lengths and tags are refused (the deterministic encoding never writes
// indefinite lengths; listings hold no tags).
func readItem(r *bufio.Reader, buf []byte, lim *itemLimits) ([]byte, error) {
	buf = buf[:0]
	type level struct {
		left  uint64 // data items still to come in this array or map
		isMap bool
		n     uint64 // items in all: 2 x pairs for a map
	}
	var stack []level
	var key uint64 // the last integer key of the outermost map
	keyOK := false
	for {
		// Where this item sits: the value of which outermost key?
		var field *fieldLimit
		atKey := false
		if len(stack) == 1 && stack[0].isMap {
			if (stack[0].n-stack[0].left)%2 == 0 {
				atKey = true
			} else if keyOK {
				if f, ok := lim.fields[key]; ok {
					field = &f
				}
			}
		}
		start := len(buf)
		ib, err := r.ReadByte()
		if err != nil {
			if err == io.EOF && start == 0 {
				return buf, io.EOF
			}
			return buf, unexpected(err)
		}
		if uint64(len(buf)) >= lim.item {
			return buf, limit.New("tree.MaxNodeBytes", "item bytes", uint64(len(buf))+1, lim.item)
		}
		buf = append(buf, ib)
		major, info := ib>>5, ib&0x1f
		var arg uint64
		switch {
		case info < 24:
			arg = uint64(info)
		case info <= 27:
			n := 1 << (info - 24) // 1, 2, 4 or 8 bytes
			if buf, err = readN(r, buf, uint64(n), lim); err != nil {
				return buf, err
			}
			b := buf[len(buf)-n:]
			switch n {
			case 1:
				arg = uint64(b[0])
			case 2:
				arg = uint64(binary.BigEndian.Uint16(b))
			case 4:
				arg = uint64(binary.BigEndian.Uint32(b))
			default:
				arg = binary.BigEndian.Uint64(b)
			}
		case info == 31:
			return buf, fmt.Errorf("%w: indefinite length or break (major type %d) at byte %d", errMalformed, major, start)
		default:
			return buf, fmt.Errorf("%w: reserved additional information %d at byte %d", errMalformed, info, start)
		}
		if atKey {
			key, keyOK = arg, major == 0
		}
		container := false
		switch major {
		case 0, 1, 7: // integers, simple values and floats: the head is all
		case 2, 3:
			if field != nil && !field.array {
				if err := limit.Check(field.limit, field.what, arg, field.max); err != nil {
					return buf, err
				}
			}
			if err := limit.Check("tree.MaxStringLen", "string length", arg, lim.str); err != nil {
				return buf, err
			}
			if buf, err = readN(r, buf, arg, lim); err != nil {
				return buf, err
			}
		case 4, 5:
			n := arg
			if major == 4 {
				if field != nil && field.array {
					if err := limit.Check(field.limit, field.what, n, field.max); err != nil {
						return buf, err
					}
				}
				if err := limit.Check("tree.MaxChunks", "array elements", n, lim.array); err != nil {
					return buf, err
				}
			} else {
				if err := limit.Check("tree.MaxNodeFields", "map pairs", n, lim.pairs); err != nil {
					return buf, err
				}
				n *= 2
			}
			// Every element takes at least one byte.
			if err := limit.Check("tree.MaxNodeBytes", "item bytes at least", uint64(len(buf))+n, lim.item); err != nil {
				return buf, err
			}
			if n > 0 {
				if err := limit.Check("tree.MaxNodeDepth", "nesting depth", uint64(len(stack)+1), uint64(lim.depth)); err != nil {
					return buf, err
				}
				stack = append(stack, level{left: n, isMap: major == 5, n: n})
				container = true
			}
		case 6:
			return buf, fmt.Errorf("%w: tag %d at byte %d (listings hold no tags)", errMalformed, arg, start)
		}
		if major == 7 && info == 24 && arg < 32 {
			return buf, fmt.Errorf("%w: simple value %d in two bytes at byte %d", errMalformed, arg, start)
		}
		if container {
			continue
		}
		// One data item is complete: count it in its enclosing containers.
		for {
			if len(stack) == 0 {
				return buf, nil
			}
			top := &stack[len(stack)-1]
			top.left--
			if top.left > 0 {
				break
			}
			stack = stack[:len(stack)-1]
		}
	}
}

// readN appends n bytes of r to buf, within the item limit.
func readN(r *bufio.Reader, buf []byte, n uint64, lim *itemLimits) ([]byte, error) {
	if err := limit.Check("tree.MaxNodeBytes", "item bytes", uint64(len(buf))+n, lim.item); err != nil {
		return buf, err
	}
	need := len(buf) + int(n)
	if need > cap(buf) {
		// Grow by doubling, never past the item limit.
		c := max(need, min(2*cap(buf), int(lim.item)), 512)
		nb := make([]byte, len(buf), c)
		copy(nb, buf)
		buf = nb
	}
	if _, err := io.ReadFull(r, buf[len(buf):need]); err != nil {
		return buf, unexpected(err)
	}
	return buf[:need], nil
}

func unexpected(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: truncated item: %w", errMalformed, io.ErrUnexpectedEOF)
	}
	return err
}
