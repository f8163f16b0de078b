package scsi

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// ElementStatus is one element descriptor of READ ELEMENT STATUS.
type ElementStatus struct {
	Type    byte
	Address uint16
	Full    bool
	Except  bool // the element is in an abnormal state (see ASC/ASCQ)
	Access  bool // the transport can reach it
	ImpExp  bool // IEE: the cartridge was put in by an operator
	ASC     byte
	ASCQ    byte
	// SourceValid says Source holds the element the cartridge came from.
	SourceValid bool
	Source      uint16
	// VolumeTag is the primary volume tag (the barcode), "" if none.
	VolumeTag string
	// DeviceID is the DTE's device identifier (DVCID) as the library sent
	// it; DeviceSerial the drive's serial number taken from it (the whole
	// identifier for type 0, the last 10 bytes of a 34-byte T10 vendor
	// identification: vendor 8, product 16, serial 10). The serial is how
	// drives are matched to /dev/sg* devices (VPD 80h).
	DeviceID     string
	DeviceSerial string
}

// ElementPage is one decoded READ ELEMENT STATUS answer.
type ElementPage struct {
	// Available is the header's "byte count of report available": larger
	// than what came back when the allocation length cut the report.
	Available int
	Truncated bool
	Elements  []ElementStatus
}

const (
	elemHeaderLen = 8
	pageHeaderLen = 8
	minDescLen    = 12
	volTagLen     = 36
)

// ParseElementStatus decodes a READ ELEMENT STATUS answer. It does not
// trust the header's "first element address reported" (tgt gets it wrong)
// nor its element count: it walks the pages and descriptors, each bounded
// by its own byte count, the report's byte count and the buffer.
func ParseElementStatus(b []byte) (ElementPage, error) {
	if len(b) < elemHeaderLen {
		return ElementPage{}, fmt.Errorf("parse element status: %d bytes, need an 8-byte header: %w", len(b), ErrMalformed)
	}
	avail := int(b[5])<<16 | int(b[6])<<8 | int(b[7])
	p := ElementPage{Available: avail}
	// No element meets the request (paging went past the last one): the
	// pages that may follow carry nothing. tgt 1.0.85 then claims 8 bytes
	// of page header that it never sends (its copy is 8 bytes short), so
	// they must not be read.
	if binary.BigEndian.Uint16(b[2:4]) == 0 {
		return p, nil
	}
	end := elemHeaderLen + avail
	if end > len(b) {
		p.Truncated = true
		end = len(b)
	}
	for off := elemHeaderLen; off < end; {
		if off+pageHeaderLen > end {
			if p.Truncated {
				break
			}
			return ElementPage{}, fmt.Errorf("parse element status: page header at %d cut at %d: %w", off, end, ErrMalformed)
		}
		h := b[off : off+pageHeaderLen]
		typ := h[0] & 0x0F
		pvol, avol := h[1]&0x80 != 0, h[1]&0x40 != 0
		dlen := int(binary.BigEndian.Uint16(h[2:4]))
		count := int(h[5])<<16 | int(h[6])<<8 | int(h[7])
		want := minDescLen
		if pvol {
			want += volTagLen
		}
		if avol {
			want += volTagLen
		}
		if dlen < want {
			return ElementPage{}, fmt.Errorf("parse element status: type %d descriptor length %d, need %d for its flags: %w", typ, dlen, want, ErrMalformed)
		}
		if typ < ElementTransport || typ > ElementDrive {
			return ElementPage{}, fmt.Errorf("parse element status: element type %d: %w", typ, ErrMalformed)
		}
		off += pageHeaderLen
		pend := off + count
		if pend > end {
			if !p.Truncated {
				return ElementPage{}, fmt.Errorf("parse element status: type %d page claims %d bytes past the report's %d: %w", typ, count, end-off, ErrMalformed)
			}
			pend = end
		}
		for ; off+dlen <= pend; off += dlen {
			p.Elements = append(p.Elements, parseDescriptor(typ, b[off:off+dlen], pvol, avol))
		}
		if off != pend && !p.Truncated {
			return ElementPage{}, fmt.Errorf("parse element status: type %d page of %d bytes is not a multiple of %d-byte descriptors: %w", typ, count, dlen, ErrMalformed)
		}
		off = pend
	}
	return p, nil
}

func parseDescriptor(typ byte, d []byte, pvol, avol bool) ElementStatus {
	e := ElementStatus{
		Type:        typ,
		Address:     binary.BigEndian.Uint16(d[0:2]),
		Full:        d[2]&0x01 != 0,
		ImpExp:      typ == ElementIE && d[2]&0x02 != 0,
		Except:      d[2]&0x04 != 0,
		Access:      d[2]&0x08 != 0,
		ASC:         d[4],
		ASCQ:        d[5],
		SourceValid: d[9]&0x80 != 0,
		Source:      binary.BigEndian.Uint16(d[10:12]),
	}
	off := minDescLen
	if pvol {
		e.VolumeTag = asciiField(d[off : off+32])
		off += volTagLen
	}
	if avol {
		off += volTagLen
	}
	// SMC-3 identification descriptor (DVCID): code set, identifier type,
	// reserved, length, identifier; bounded by the descriptor length.
	if off+4 <= len(d) {
		n := int(d[off+3])
		if id := d[off+4:]; n > 0 {
			id = id[:min(n, len(id))]
			switch {
			case d[off]&0x0F == 1: // binary code set
				e.DeviceID = hex.EncodeToString(id)
			case d[off+1]&0x0F == 1 && len(id) >= 34: // T10 vendor identification
				e.DeviceID = asciiField(id)
				e.DeviceSerial = asciiField(id[24:34])
			default:
				e.DeviceID = asciiField(id)
				e.DeviceSerial = e.DeviceID
			}
		}
	}
	return e
}
