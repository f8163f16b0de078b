package tree

import (
	"errors"
	"fmt"
	"strings"

	"vaultnode/internal/limit"
)

// Limits of one listing node and of one listing, enforced by Reader (before
// the bytes of an over-long item are read or allocated), by Validate and by
// Writer, on the vault and on the agent alike. docs/protocol.md ("Limits")
// lists them with the error each one gives; changing one changes what a
// vault accepts, so a lower value breaks backups that worked.
const (
	// MaxPathLen bounds a node's path and a hard link's LinkTo. PATH_MAX
	// (4,096) bounds one system call, not a tree: the walker and restore
	// use *at calls, so deeper trees are backed up and restored. 16 x
	// PATH_MAX leaves room for them.
	MaxPathLen = 64 << 10
	// MaxTargetLen bounds a symlink's target: symlink(2) refuses one of
	// PATH_MAX bytes or more (the terminating NUL included).
	MaxTargetLen = 4096
	// MaxOwnerLen bounds the user and group names (LOGIN_NAME_MAX).
	MaxOwnerLen = 256
	// MaxErrLen bounds the reason of an unreadable node; Writer shortens a
	// longer one.
	MaxErrLen = 4096
	// MaxXattrs bounds the extended attributes (ACLs included) of one
	// node. Linux lists at most 64 KiB of names per inode (XATTR_LIST_MAX);
	// real files carry a handful.
	MaxXattrs = 1024
	// MaxXattrNameLen is XATTR_NAME_MAX.
	MaxXattrNameLen = 255
	// MaxXattrValueLen is XATTR_SIZE_MAX, the largest value (an ACL too).
	MaxXattrValueLen = 64 << 10
	// MaxChunks bounds a file's chunk references: the largest file one
	// node describes is about 512 GiB at the chunker's average chunk size
	// (1 MiB), and at least 128 GiB at its minimum size (256 KiB). A
	// reader holds a whole node, so this bounds the memory of every
	// listing reader (vault commit, agent restore). Raising it later
	// keeps old listings readable; lowering it would not.
	MaxChunks = 1 << 19
	// MaxExtents bounds a sparse file's data extents. The agent records a
	// node over any of these limits as unreadable, with the reason
	// (agentkit/backup/limits.go), or leaves out a path over MaxPathLen.
	MaxExtents = 1 << 17
	// MaxNodeBytes bounds one encoded node: MaxChunks references (42 bytes
	// each, 22 MB), MaxExtents extents (at most 21 bytes each, 2.8 MB)
	// and room for the rest.
	MaxNodeBytes = 32 << 20
	// MaxStringLen bounds any one byte or text string in a node: the
	// largest field, a path or an xattr value.
	MaxStringLen = 64 << 10
	// MaxNodeDepth bounds the nesting of arrays and maps in a node (node
	// map, xattr array, xattr map). Tags and indefinite lengths are refused.
	MaxNodeDepth = 4
	// MaxNodeFields bounds the pairs of any map in a node (26 fields today).
	MaxNodeFields = 32

	// MaxListingRefs bounds the chunk references of one listing (a commit,
	// a journal record, a manifest). A 1 MiB JSON commit body holds about
	// 7,500 of them; at the average listing chunk of 1 MiB and about 200
	// bytes per node that is some 40 million nodes.
	MaxListingRefs = 8192
	// MaxListingChunk bounds the plaintext length of one listing chunk:
	// the chunker's maximum (internal/chunker.MaxSize).
	MaxListingChunk = 4 << 20
	// MaxListingBytes bounds the plaintext of one listing, the sum of its
	// references' lengths: twice MaxListingRefs chunks of average size.
	// It bounds the work of reading one listing, whatever the references
	// repeat.
	MaxListingBytes = 16 << 30
)

// CheckRefs checks a listing's chunk references against the limits before
// any of them is read: their number, each length, and their sum. A chunk
// may appear more than once (two copies of a big file give identical
// stretches of listing); what repeats still counts toward MaxListingBytes.
func CheckRefs(refs []ChunkRef) error {
	if err := limit.Check("tree.MaxListingRefs", "listing chunk references", uint64(len(refs)), MaxListingRefs); err != nil {
		return fmt.Errorf("%w: %w", ErrListing, err)
	}
	var sum uint64
	for i, r := range refs {
		if r.Len == 0 {
			return fmt.Errorf("%w: listing chunk %d (%x) has length 0", ErrListing, i, r.ID[:8])
		}
		if r.Len > MaxListingChunk {
			err := limit.New("tree.MaxListingChunk", fmt.Sprintf("listing chunk %d (%x) length", i, r.ID[:8]), uint64(r.Len), MaxListingChunk)
			return fmt.Errorf("%w: %w", ErrListing, err)
		}
		sum += uint64(r.Len)
	}
	if err := limit.Check("tree.MaxListingBytes", "listing plaintext bytes", sum, MaxListingBytes); err != nil {
		return fmt.Errorf("%w: %w", ErrListing, err)
	}
	return nil
}

// CheckLimits checks a decoded or to-be-written node against the limits
// of its fields (Reader has already refused, before reading them, strings
// and arrays over these limits).
func (n *Node) CheckLimits() error {
	type field struct {
		lim, what string
		got, max  int
	}
	for _, f := range []field{
		{"tree.MaxPathLen", "path length", len(n.Path), MaxPathLen},
		{"tree.MaxPathLen", "hard link source length", len(n.LinkTo), MaxPathLen},
		{"tree.MaxTargetLen", "symlink target length", len(n.Target), MaxTargetLen},
		{"tree.MaxOwnerLen", "user name length", len(n.User), MaxOwnerLen},
		{"tree.MaxOwnerLen", "group name length", len(n.Group), MaxOwnerLen},
		{"tree.MaxErrLen", "reason length", len(n.Err), MaxErrLen},
		{"tree.MaxXattrs", "extended attributes", len(n.Xattrs), MaxXattrs},
		{"tree.MaxChunks", "chunk references", len(n.Chunks), MaxChunks},
		{"tree.MaxExtents", "extents", len(n.Extents), MaxExtents},
	} {
		if err := limit.Check(f.lim, f.what, uint64(f.got), uint64(f.max)); err != nil {
			return err
		}
	}
	for _, x := range n.Xattrs {
		if err := limit.Check("tree.MaxXattrNameLen", "extended attribute name length", uint64(len(x.Name)), MaxXattrNameLen); err != nil {
			return err
		}
		if err := limit.Check("tree.MaxXattrValueLen", "extended attribute value length", uint64(len(x.Value)), MaxXattrValueLen); err != nil {
			return err
		}
	}
	return nil
}

// nodeFields are the limits Reader applies to a node's fields as their
// heads arrive, by CBOR key (see Node's tags): strings by length, arrays by
// count. Other strings are bounded by MaxStringLen, other arrays by
// MaxChunks.
var nodeFields = map[uint64]fieldLimit{
	1:  {"tree.MaxPathLen", "path length", MaxPathLen, false},
	6:  {"tree.MaxOwnerLen", "user name length", MaxOwnerLen, false},
	7:  {"tree.MaxOwnerLen", "group name length", MaxOwnerLen, false},
	17: {"tree.MaxTargetLen", "symlink target length", MaxTargetLen, false},
	18: {"tree.MaxPathLen", "hard link source length", MaxPathLen, false},
	19: {"tree.MaxXattrs", "extended attributes", MaxXattrs, true},
	22: {"tree.MaxExtents", "extents", MaxExtents, true},
	23: {"tree.MaxChunks", "chunk references", MaxChunks, true},
	26: {"tree.MaxErrLen", "reason length", MaxErrLen, false},
}

var nodeLimits = itemLimits{
	item:   MaxNodeBytes,
	str:    MaxStringLen,
	array:  MaxChunks,
	pairs:  MaxNodeFields,
	depth:  MaxNodeDepth,
	fields: nodeFields,
}

// shortenErr returns n itself, or a copy whose Err is cut to MaxErrLen at
// a UTF-8 boundary.
func shortenErr(n *Node) *Node {
	if len(n.Err) <= MaxErrLen {
		return n
	}
	c := *n
	// A rune cut in two becomes invalid UTF-8, which ToValidUTF8 drops.
	c.Err = strings.ToValidUTF8(n.Err[:MaxErrLen-len("...")], "") + "..."
	return &c
}

// IsLimit reports whether err is a limit error (as opposed to a malformed
// input).
func IsLimit(err error) bool { return errors.Is(err, limit.ErrExceeded) }
