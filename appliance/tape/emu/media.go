package emu

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Media is a cartridge's content: blocks and filemarks. With a path it is
// kept in an image file, written when WRITE FILEMARKS flushes the drive's
// buffer and when the cartridge is unloaded, as a real drive puts its
// buffer on tape: blocks written after the last filemark are lost by an
// injected failure (Tape.FailWritesAfter).
//
// The image is a sequence of records, each a 4-byte big-endian length and
// that many bytes; the length 0xFFFFFFFF is a filemark.
type Media struct {
	recs    []record
	used    int
	flushed int // records that reached the "tape" (and the image)
	path    string
	// Capacity and EarlyWarning (bytes), 0: the drive's.
	Capacity, EarlyWarning int
	err                    error
}

const imageMark = 0xFFFFFFFF

// maxImageBlock bounds a block read from an image.
const maxImageBlock = 16 << 20

// NewMedia returns a blank in-memory cartridge.
func NewMedia() *Media { return &Media{} }

// OpenMedia returns the cartridge kept in the image at path, blank if
// the file does not exist.
func OpenMedia(path string) (*Media, error) {
	m := &Media{path: path}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	for {
		var h [4]byte
		if _, err := io.ReadFull(br, h[:]); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("read tape image %s: %w", path, err)
		}
		n := binary.BigEndian.Uint32(h[:])
		if n == imageMark {
			m.recs = append(m.recs, record{mark: true})
			continue
		}
		if n > maxImageBlock {
			return nil, fmt.Errorf("read tape image %s: block of %d bytes over %d", path, n, maxImageBlock)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, fmt.Errorf("read tape image %s: %w", path, err)
		}
		m.recs = append(m.recs, record{data: b})
		m.used += int(n)
	}
	m.flushed = len(m.recs)
	return m, nil
}

// lose drops what the drive's buffer held: everything after the last
// flush.
func (m *Media) lose() {
	for _, r := range m.recs[m.flushed:] {
		m.used -= len(r.data)
	}
	m.recs = m.recs[:m.flushed]
}

// flush puts the buffered records on tape.
func (m *Media) flush() error {
	m.flushed = len(m.recs)
	return m.save()
}

// save writes the image (nothing for an in-memory cartridge).
func (m *Media) save() error {
	m.flushed = len(m.recs)
	if m.path == "" {
		return nil
	}
	f, err := os.Create(m.path + ".tmp")
	if err != nil {
		m.err = err
		return err
	}
	bw := bufio.NewWriter(f)
	for _, r := range m.recs {
		var h [4]byte
		if r.mark {
			binary.BigEndian.PutUint32(h[:], imageMark)
			bw.Write(h[:])
			continue
		}
		binary.BigEndian.PutUint32(h[:], uint32(len(r.data)))
		bw.Write(h[:])
		bw.Write(r.data)
	}
	err = errors.Join(bw.Flush(), f.Close())
	if err == nil {
		err = os.Rename(m.path+".tmp", m.path)
	}
	m.err = err
	return err
}

// Used is the bytes of blocks on the cartridge.
func (m *Media) Used() int { return m.used }

// Files returns the number of filemarks on the cartridge.
func (m *Media) Files() int {
	n := 0
	for _, r := range m.recs {
		if r.mark {
			n++
		}
	}
	return n
}

// ReadFile returns tape file n (from 0) as its blocks concatenated, as
// `mt asf N; dd if=/dev/nst0 bs=256k` reads it.
func (m *Media) ReadFile(n int) ([]byte, error) {
	file := 0
	var out []byte
	for _, r := range m.recs {
		if r.mark {
			if file == n {
				return out, nil
			}
			file++
			continue
		}
		if file == n {
			out = append(out, r.data...)
		}
	}
	if file == n && out != nil {
		return out, nil
	}
	return nil, fmt.Errorf("tape file %d: end of data after %d files", n, file)
}

// Damage flips length bytes at offset off of tape file n (from 0), as a
// bad spot read back wrong: for tests of the readers' checks and
// fallbacks.
func (m *Media) Damage(n, off, length int) error {
	file := 0
	for i, r := range m.recs {
		if r.mark {
			file++
			continue
		}
		if file != n {
			continue
		}
		if off >= len(r.data) {
			off -= len(r.data)
			continue
		}
		b := append([]byte(nil), r.data...)
		for j := off; j < off+length && j < len(b); j++ {
			b[j] ^= 0x5A
		}
		m.recs[i].data = b
		return m.save()
	}
	return fmt.Errorf("tape file %d: no byte %d", n, off)
}
