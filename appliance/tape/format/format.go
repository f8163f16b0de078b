// Package format is the layout of a vaultnode cartridge (docs/tape.md,
// "The tape format"): variable-length blocks of RecordSize bytes carrying
// standard tar archives, one per tape file, so that `mt` and `tar -b 512`
// read every file of a cartridge on any Linux machine.
//
// File 0 of a cartridge is the label file: a plain tar with the label
// (VAULTNODE-LABEL, JSON), a README and the static recovery program. Every
// later file is a data file: a tar whose first member is VAULTNODE-FILE
// (JSON: which media set, cartridge and file it is), then the chunks it
// holds as pack entries (sealed with the company's key unless the pool is
// plain) and, for every version that ends in it, the manifest entry and a
// version.json naming every tape file that holds the version's chunks.
//
// This package only reads and writes bytes through a BlockDevice; the
// recovery program (appliance/cmd/vault-tape-recover) uses it without the
// rest of the appliance.
package format

import (
	"archive/tar"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"
)

// RecordSize is the length of every block on tape: 256 KiB, tar's
// blocking factor 512 (`tar -b 512`). The last block of a file is padded
// with zeros to the full length, so every block is the same size.
const RecordSize = 512 * 512

// Version is the format version written in labels and file headers.
const Version = 1

// Member names.
const (
	LabelName    = "VAULTNODE-LABEL"
	ReadmeName   = "README"
	RecoverName  = "vault-tape-recover"
	FileHeadName = "VAULTNODE-FILE"
	// Root is the directory of a data file's members.
	Root = "vaultnode"
)

// Limits of what a reader accepts from a tape.
const (
	MaxJSON   = 1 << 20   // a label, file header or version.json
	MaxMember = 256 << 20 // any member (the recovery program is the largest)
	MaxFiles  = 1 << 20   // tape files named by one version.json
)

// Sentinel errors.
var (
	ErrNotLabel  = errors.New("not a vaultnode label file")
	ErrMalformed = errors.New("malformed tape file")
	// ErrNotCatalog: the tape file is not a catalog file.
	ErrNotCatalog = errors.New("not a vaultnode catalog file")
)

// Label is what file 0 says the cartridge is.
type Label struct {
	Format   int       `json:"format"`
	Barcode  string    `json:"barcode"`
	UUID     string    `json:"uuid"`
	Pool     string    `json:"pool"`
	Vault    string    `json:"vault,omitempty"`
	Labelled time.Time `json:"labelled"`
}

// FileHeader is the first member of every data file.
type FileHeader struct {
	Format    int       `json:"format"`
	MediaSet  string    `json:"media_set"`
	Pool      string    `json:"pool"`
	Barcode   string    `json:"barcode"`
	Cartridge string    `json:"cartridge_uuid"`
	SetSeq    int       `json:"set_seq"` // the cartridge's place in its media set, from 0
	File      int       `json:"file"`    // this file's number on the cartridge (label file = 0)
	Written   time.Time `json:"written"`
	Encrypted bool      `json:"encrypted"`
}

// FileRef names one tape file.
type FileRef struct {
	Barcode string `json:"barcode"`
	File    int    `json:"file"`
}

func (f FileRef) String() string { return f.Barcode + ":" + strconv.Itoa(f.File) }

// VersionInfo is a version's version.json: enough to find and rebuild it.
type VersionInfo struct {
	Company    string    `json:"company"`
	Computer   string    `json:"computer"`
	Config     string    `json:"config"`
	Seq        uint64    `json:"seq"`
	Started    time.Time `json:"started"`
	Finished   time.Time `json:"finished"`
	ManifestID string    `json:"manifest_id"` // hex
	MediaSet   string    `json:"media_set"`
	// Files are every tape file holding the version's manifest, listing
	// and data chunks (this one included).
	Files []FileRef `json:"files"`
}

// ChunkMember names a chunk's member: its pack entry, sealed
// ("vaultnode/acme/chunks/ab/ab12...") or, in a plain pool, with the
// payload opened (suffix ".plain").
func ChunkMember(company string, id [32]byte, plain bool) string {
	h := hex.EncodeToString(id[:])
	n := path.Join(Root, company, "chunks", h[:2], h)
	if plain {
		n += ".plain"
	}
	return n
}

// VersionDir is the directory of a version's manifest.entry and
// version.json.
func VersionDir(company, computer, config string, seq uint64) string {
	return path.Join(Root, company, "versions", computer, config, strconv.FormatUint(seq, 10))
}

// ParseChunkMember decodes a chunk member's name.
func ParseChunkMember(name string) (company string, id [32]byte, plain, ok bool) {
	p := strings.Split(name, "/")
	if len(p) != 5 || p[0] != Root || p[2] != "chunks" {
		return "", id, false, false
	}
	h := p[4]
	plain = strings.HasSuffix(h, ".plain")
	h = strings.TrimSuffix(h, ".plain")
	if len(h) != 64 || h[:2] != p[3] {
		return "", id, false, false
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return "", id, false, false
	}
	return p[1], id, plain, true
}

// BlockDevice is what the format needs of a drive: whole blocks.
// *drive.Drive satisfies it.
type BlockDevice interface {
	WriteBlock(ctx context.Context, p []byte) error
	ReadBlock(ctx context.Context, buf []byte) (int, error)
}

// Sentinels a BlockDevice returns, matched by errors.Is (package drive's).
type Sentinels struct {
	Filemark, EndOfData, EarlyWarning error
}

// BlockWriter cuts a byte stream into RecordSize blocks.
type BlockWriter struct {
	ctx  context.Context
	dev  BlockDevice
	s    Sentinels
	buf  []byte
	n    int64 // bytes written to the device
	warn bool
	err  error
}

// NewBlockWriter writes to dev; s names the device's early-warning error.
func NewBlockWriter(ctx context.Context, dev BlockDevice, s Sentinels) *BlockWriter {
	return &BlockWriter{ctx: ctx, dev: dev, s: s, buf: make([]byte, 0, RecordSize)}
}

// Write buffers p and writes every full block.
func (w *BlockWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	done := 0
	for len(p) > 0 {
		k := copy(w.buf[len(w.buf):RecordSize], p)
		w.buf = w.buf[:len(w.buf)+k]
		p, done = p[k:], done+k
		if len(w.buf) == RecordSize {
			if err := w.flush(); err != nil {
				return done, err
			}
		}
	}
	return done, nil
}

func (w *BlockWriter) flush() error {
	err := w.dev.WriteBlock(w.ctx, w.buf)
	if w.s.EarlyWarning != nil && errors.Is(err, w.s.EarlyWarning) {
		w.warn, err = true, nil
	}
	if err != nil {
		w.err = err
		return err
	}
	w.n += int64(len(w.buf))
	w.buf = w.buf[:0]
	return nil
}

// EarlyWarning says the drive reported the end of medium early warning:
// finish the file and go on on the next cartridge.
func (w *BlockWriter) EarlyWarning() bool { return w.warn }

// Written is the bytes written to the device so far (whole blocks).
func (w *BlockWriter) Written() int64 { return w.n }

// Pending is the bytes buffered, not yet written.
func (w *BlockWriter) Pending() int { return len(w.buf) }

// Close pads the last block with zeros and writes it. It does not write
// the filemark: that is the caller's commit step.
func (w *BlockWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) == 0 {
		return nil
	}
	clear(w.buf[len(w.buf):RecordSize])
	w.buf = w.buf[:RecordSize]
	return w.flush()
}

// BlockReader reads one tape file's blocks as a byte stream; the filemark
// ends it (io.EOF).
type BlockReader struct {
	ctx  context.Context
	dev  BlockDevice
	s    Sentinels
	buf  []byte
	r    []byte
	done bool
	err  error
}

// NewBlockReader reads from dev at its current position.
func NewBlockReader(ctx context.Context, dev BlockDevice, s Sentinels) *BlockReader {
	return &BlockReader{ctx: ctx, dev: dev, s: s, buf: make([]byte, RecordSize)}
}

// ErrEndOfData: the tape ends before a file (no file there).
var ErrEndOfData = errors.New("end of data")

func (r *BlockReader) Read(p []byte) (int, error) {
	for len(r.r) == 0 {
		if r.done {
			return 0, io.EOF
		}
		if r.err != nil {
			return 0, r.err
		}
		n, err := r.dev.ReadBlock(r.ctx, r.buf)
		switch {
		case err != nil && errors.Is(err, r.s.Filemark):
			r.done = true
			return 0, io.EOF
		case err != nil && errors.Is(err, r.s.EndOfData):
			r.err = fmt.Errorf("read tape file: %w", ErrEndOfData)
			return 0, r.err
		case err != nil:
			r.err = fmt.Errorf("read tape file: %w", err)
			return 0, r.err
		}
		r.r = r.buf[:n]
	}
	n := copy(p, r.r)
	r.r = r.r[n:]
	return n, nil
}

// Drain reads to the filemark, so the tape is at the next file.
func (r *BlockReader) Drain() error {
	for !r.done {
		r.r = nil
		if _, err := r.Read(make([]byte, 1)); err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

// WriteJSON adds a JSON member.
func WriteJSON(tw *tar.Writer, name string, v any, when time.Time) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	return WriteMember(tw, name, b, 0o644, when)
}

// WriteMember adds a regular-file member.
func WriteMember(tw *tar.Writer, name string, b []byte, mode int64, when time.Time) error {
	h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(b)), Mode: mode, ModTime: when.Truncate(time.Second),
		Uname: "vaultnode", Gname: "vaultnode", Format: tar.FormatPAX}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write tar member %s: %w", name, err)
	}
	if _, err := tw.Write(b); err != nil {
		return fmt.Errorf("write tar member %s: %w", name, err)
	}
	return nil
}

// ReadMember reads the current member, at most max bytes.
func ReadMember(tr *tar.Reader, h *tar.Header, max int64) ([]byte, error) {
	if h.Size < 0 || h.Size > max {
		return nil, fmt.Errorf("%w: member %s of %d bytes is over the %d-byte limit", ErrMalformed, h.Name, h.Size, max)
	}
	b := make([]byte, h.Size)
	if _, err := io.ReadFull(tr, b); err != nil {
		return nil, fmt.Errorf("read member %s: %w", h.Name, err)
	}
	return b, nil
}

// DecodeJSON decodes a JSON member, bounded by MaxJSON.
func DecodeJSON(b []byte, v any) error {
	if len(b) > MaxJSON {
		return fmt.Errorf("%w: %d bytes of JSON, over %d", ErrMalformed, len(b), MaxJSON)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// WriteLabelFile writes file 0: label, README and the recovery program
// (nil: left out, e.g. in tests that do not need it). It does not write
// the filemark.
func WriteLabelFile(w io.Writer, l Label, recovery []byte) error {
	tw := tar.NewWriter(w)
	if err := WriteJSON(tw, LabelName, l, l.Labelled); err != nil {
		return err
	}
	if err := WriteMember(tw, ReadmeName, []byte(Readme(l)), 0o644, l.Labelled); err != nil {
		return err
	}
	if recovery != nil {
		if err := WriteMember(tw, RecoverName, recovery, 0o755, l.Labelled); err != nil {
			return err
		}
	}
	return tw.Close()
}

// ReadLabelFile reads file 0 and returns the label (the other members are
// skipped).
func ReadLabelFile(r io.Reader) (Label, error) {
	tr := tar.NewReader(r)
	h, err := tr.Next()
	if err != nil {
		return Label{}, fmt.Errorf("%w: %v", ErrNotLabel, err)
	}
	if h.Name != LabelName {
		return Label{}, fmt.Errorf("%w: first member is %q", ErrNotLabel, h.Name)
	}
	b, err := ReadMember(tr, h, MaxJSON)
	if err != nil {
		return Label{}, err
	}
	var l Label
	if err := DecodeJSON(b, &l); err != nil {
		return Label{}, err
	}
	if l.Format != Version || l.Barcode == "" || l.UUID == "" {
		return l, fmt.Errorf("%w: label of format %d, barcode %q, uuid %q", ErrNotLabel, l.Format, l.Barcode, l.UUID)
	}
	for {
		if _, err := tr.Next(); err == io.EOF {
			return l, nil
		} else if err != nil {
			return l, fmt.Errorf("read label file: %w", err)
		}
	}
}

// Readme is the README of file 0: how to read the cartridge by hand.
func Readme(l Label) string {
	return fmt.Sprintf(`vaultnode cartridge %s (pool %s, labelled %s, format %d)

This cartridge was written by a vaultnode vault. Every tape file is a
standard tar archive written in variable-length blocks of %d bytes
(tar blocking factor 512). You need a tape drive, this cartridge, and for
an encrypted pool the company's key ("vaultctl company export-key").

  mt -f /dev/nst0 rewind
  mt -f /dev/nst0 setblk 0
  tar -x -b 512 -f /dev/nst0          # file 0: this README, VAULTNODE-LABEL, %s
  mkdir data
  mt -f /dev/nst0 asf 1 && tar -t -b 512 -f /dev/nst0            # list data file 1
  mt -f /dev/nst0 asf N && tar -x -b 512 -f /dev/nst0 -C data    # extract data file N

Each data file holds vaultnode/<company>/chunks/.. (pack entries) and
vaultnode/<company>/versions/<computer>/<config>/<seq>/version.json, which
names every tape file (cartridge:file) holding that version. Extract those
files into one directory, then:

  ./%s list -from data
  ./%s restore -key company.key -from data -version COMPANY/COMPUTER/CONFIG/SEQ -to /restore

The program checks every chunk against its id and writes the version's
files, directories and symbolic links with their modes and times.

The last tape file is usually the cartridge's catalog (%s, not
encrypted: names, times and chunk ids only): which versions end in which
data file and which files each needs, so you extract only those:

  mt -f /dev/nst0 eod; mt -f /dev/nst0 bsf 2; mt -f /dev/nst0 fsf 1
  mkdir cat; tar -x -b 512 -f /dev/nst0 -C cat
  ./%s catalog -from cat
`, l.Barcode, l.Pool, l.Labelled.UTC().Format(time.RFC3339), l.Format, RecordSize, RecoverName, RecoverName, RecoverName, CatalogName, RecoverName)
}
