package meta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Names of the xattrs that hold POSIX ACLs.
const (
	XattrACLAccess  = "system.posix_acl_access"
	XattrACLDefault = "system.posix_acl_default"
)

// ACL entry tags (linux/posix_acl.h).
const (
	ACLUserObj  uint16 = 0x01
	ACLUser     uint16 = 0x02
	ACLGroupObj uint16 = 0x04
	ACLGroup    uint16 = 0x08
	ACLMask     uint16 = 0x10
	ACLOther    uint16 = 0x20

	aclVersion   = 2
	aclUndefined = 0xffffffff
)

// ACLEntry is one entry of a POSIX ACL as stored in its xattr. Perm holds
// r=4, w=2, x=1; ID is a uid or gid for ACLUser and ACLGroup.
type ACLEntry struct {
	Tag  uint16
	Perm uint16
	ID   uint32
}

// ParseACL decodes the value of a system.posix_acl_* xattr.
func ParseACL(b []byte) ([]ACLEntry, error) {
	if len(b) < 4 || (len(b)-4)%8 != 0 {
		return nil, fmt.Errorf("parse ACL: %d bytes is not a header and whole entries", len(b))
	}
	if v := binary.LittleEndian.Uint32(b); v != aclVersion {
		return nil, fmt.Errorf("parse ACL: version %d, want %d", v, aclVersion)
	}
	var out []ACLEntry
	for p := b[4:]; len(p) > 0; p = p[8:] {
		out = append(out, ACLEntry{
			Tag:  binary.LittleEndian.Uint16(p),
			Perm: binary.LittleEndian.Uint16(p[2:]),
			ID:   binary.LittleEndian.Uint32(p[4:]),
		})
	}
	return out, nil
}

// EncodeACL encodes entries as a system.posix_acl_* xattr value. Entries
// must be in the kernel's order: by tag, then by ID; IDs of entries other
// than ACLUser and ACLGroup are stored as undefined.
func EncodeACL(entries []ACLEntry) []byte {
	b := make([]byte, 4, 4+8*len(entries))
	binary.LittleEndian.PutUint32(b, aclVersion)
	for _, e := range entries {
		id := e.ID
		if e.Tag != ACLUser && e.Tag != ACLGroup {
			id = aclUndefined
		}
		b = binary.LittleEndian.AppendUint16(b, e.Tag)
		b = binary.LittleEndian.AppendUint16(b, e.Perm)
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	return b
}

// ParseACLText reads the short text form ACLText writes
// ("user::rw-,user:1000:r--,group::r--,mask::r--,other::---"), with numeric
// IDs only.
func ParseACLText(s string) ([]ACLEntry, error) {
	var out []ACLEntry
	for _, f := range strings.Split(s, ",") {
		p := strings.Split(f, ":")
		if len(p) != 3 || len(p[2]) != 3 {
			return nil, fmt.Errorf("parse ACL entry %q: want tag:id:rwx", f)
		}
		var e ACLEntry
		switch p[0] {
		case "user":
			e.Tag = ACLUserObj
			if p[1] != "" {
				e.Tag = ACLUser
			}
		case "group":
			e.Tag = ACLGroupObj
			if p[1] != "" {
				e.Tag = ACLGroup
			}
		case "mask":
			e.Tag = ACLMask
		case "other":
			e.Tag = ACLOther
		default:
			return nil, fmt.Errorf("parse ACL entry %q: unknown tag", f)
		}
		if e.Tag == ACLUser || e.Tag == ACLGroup {
			id, err := strconv.ParseUint(p[1], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("parse ACL entry %q: %w", f, err)
			}
			e.ID = uint32(id)
		}
		for i, c := range "rwx" {
			switch p[2][i] {
			case byte(c):
				e.Perm |= 4 >> i
			case '-':
			default:
				return nil, fmt.Errorf("parse ACL entry %q: bad permissions", f)
			}
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("parse ACL: empty")
	}
	return out, nil
}

// ACLText spells an ACL xattr value in the short text form, numeric IDs:
// "user::rw-,user:65534:r-x,group::r--,mask::r-x,other::r--".
func ACLText(b []byte) string {
	es, err := ParseACL(b)
	if err != nil {
		return fmt.Sprintf("invalid ACL %x", b)
	}
	parts := make([]string, 0, len(es))
	for _, e := range es {
		var tag, id string
		switch e.Tag {
		case ACLUserObj:
			tag = "user"
		case ACLUser:
			tag, id = "user", strconv.FormatUint(uint64(e.ID), 10)
		case ACLGroupObj:
			tag = "group"
		case ACLGroup:
			tag, id = "group", strconv.FormatUint(uint64(e.ID), 10)
		case ACLMask:
			tag = "mask"
		case ACLOther:
			tag = "other"
		default:
			tag, id = fmt.Sprintf("tag%#x", e.Tag), strconv.FormatUint(uint64(e.ID), 10)
		}
		perm := []byte("---")
		for i, c := range "rwx" {
			if e.Perm&(4>>i) != 0 {
				perm[i] = byte(c)
			}
		}
		parts = append(parts, tag+":"+id+":"+string(perm))
	}
	return strings.Join(parts, ",")
}
