package format

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"time"
)

// The catalog file (docs/tape.md, "The catalog file"): the last tape file
// of a cartridge, written at the end of every job's writing on it (before
// the cartridge is unloaded or the job spans to the next one). It is the
// cartridge's own catalog: which data files it holds, which chunks of
// which companies are in each, the versions that end in each and the
// cartridge's media set, so that a scan rebuilds the cartridge's records by
// reading this one file (reached with SPACE to the end of data and back)
// instead of every data file. A later job appending to the cartridge
// writes over it (it starts where the last data file ended) and writes a
// new one at its end; a cartridge whose last file is not a catalog file
// (a job stopped before writing it) is scanned file by file.
//
// It holds only what the data files already show in the clear (member
// names, VAULTNODE-FILE and version.json): company, computer and
// configuration names, times, sizes and chunk ids, which are keyed hashes
// that reveal nothing of the data without the company's key. So it is not
// encrypted, and a scan needs no key.
//
// Members, in order: CatalogName (JSON CatalogHeader), then for each data
// file N from 1: CatalogRoot/BARCODE/N/file.json (JSON CatalogFile) and
// for each company with chunks in it, in the order file.json lists them,
// CatalogRoot/BARCODE/N/COMPANY.ids: the chunk ids, 32 bytes each.

// Member names of the catalog file.
const (
	CatalogName = "VAULTNODE-CATALOG"
	CatalogRoot = "vaultnode-catalog"
)

// Limits of a catalog file a reader accepts.
const (
	MaxCatalogFiles  = 1 << 20 // data files one catalog describes
	MaxCatalogChunks = 1 << 16 // chunk ids of one company in one data file
	MaxCatalogJSON   = 8 << 20 // one file.json (its versions)
	MaxCatalogParts  = 1 << 12 // companies in one data file
)

// CatalogHeader is the catalog file's first member.
type CatalogHeader struct {
	Format    int    `json:"format"`
	Barcode   string `json:"barcode"`
	Cartridge string `json:"cartridge_uuid"`
	Pool      string `json:"pool"`
	MediaSet  string `json:"media_set"`
	SetSeq    int    `json:"set_seq"` // the cartridge's place in its media set, from 0
	// SetCreated and SetCartridges are the media set as the vault knew it
	// when the catalog was written (the set's cartridges in order).
	SetCreated    time.Time `json:"set_created"`
	SetCartridges []string  `json:"set_cartridges"`
	// File is this catalog file's number; the data files are 1 to File-1.
	File    int       `json:"file"`
	Chunks  int       `json:"chunks"` // chunk ids listed, every data file together
	Full    bool      `json:"full,omitempty"`
	Written time.Time `json:"written"`
}

// CatalogFile describes one data file (file.json).
type CatalogFile struct {
	File     int       `json:"file"`
	MediaSet string    `json:"media_set"`
	Written  time.Time `json:"written"`
	Bytes    int64     `json:"bytes"`
	// Block is the logical object number where the file starts, when the
	// drive reported it (BlockKnown).
	Block      uint64 `json:"block,omitempty"`
	BlockKnown bool   `json:"block_known,omitempty"`
	// Chunks: the companies with chunks in the file and how many, in the
	// order of their .ids members.
	Chunks []CatalogChunks `json:"chunks"`
	// Versions are the versions that end in the file (as their
	// version.json says) and when their copy was written.
	Versions []CatalogVersion `json:"versions"`
}

// CatalogChunks counts one company's chunks in a data file.
type CatalogChunks struct {
	Company string `json:"company"`
	Count   int    `json:"count"`
}

// CatalogVersion is a version ending in a data file.
type CatalogVersion struct {
	VersionInfo
	Written time.Time `json:"written"`
}

// CatalogIDs is one company's chunk ids in a data file.
type CatalogIDs struct {
	Company string
	IDs     [][32]byte
}

func catalogDir(barcode string, file int) string {
	return path.Join(CatalogRoot, barcode, strconv.Itoa(file))
}

// CatalogWriter writes a catalog file's members to a tar stream.
type CatalogWriter struct {
	tw      *tar.Writer
	h       CatalogHeader
	next    int
	written int
}

// NewCatalogWriter writes the header; the caller then adds every data
// file in order with File and ends with Close. It does not write the
// filemark.
func NewCatalogWriter(w io.Writer, h CatalogHeader) (*CatalogWriter, error) {
	h.Format = Version
	tw := tar.NewWriter(w)
	if err := WriteJSON(tw, CatalogName, h, h.Written); err != nil {
		return nil, err
	}
	return &CatalogWriter{tw: tw, h: h, next: 1}, nil
}

// File adds data file f with its chunk ids, one CatalogIDs per company.
func (c *CatalogWriter) File(f CatalogFile, ids []CatalogIDs) error {
	if f.File != c.next {
		return fmt.Errorf("catalog of %s: data file %d after %d", c.h.Barcode, f.File, c.next-1)
	}
	c.next++
	f.Chunks = f.Chunks[:0]
	for _, p := range ids {
		f.Chunks = append(f.Chunks, CatalogChunks{Company: p.Company, Count: len(p.IDs)})
	}
	dir := catalogDir(c.h.Barcode, f.File)
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if err := WriteMember(c.tw, dir+"/file.json", append(b, '\n'), 0o644, c.h.Written); err != nil {
		return err
	}
	for _, p := range ids {
		raw := make([]byte, 0, 32*len(p.IDs))
		for _, id := range p.IDs {
			raw = append(raw, id[:]...)
		}
		if err := WriteMember(c.tw, dir+"/"+p.Company+".ids", raw, 0o644, c.h.Written); err != nil {
			return err
		}
		c.written += len(p.IDs)
	}
	return nil
}

// Close ends the archive after checking that every data file was added.
func (c *CatalogWriter) Close() error {
	if c.next != c.h.File {
		return fmt.Errorf("catalog of %s: %d data files written, the header says %d", c.h.Barcode, c.next-1, c.h.File-1)
	}
	if c.written != c.h.Chunks {
		return fmt.Errorf("catalog of %s: %d chunk ids written, the header says %d", c.h.Barcode, c.written, c.h.Chunks)
	}
	return c.tw.Close()
}

// ReadCatalog reads a catalog file: head gets the header (an error from
// it stops the reading), then each gets every data file in order with its
// chunk ids. Every count, name and number is checked against the header
// and the limits above; a file that is not a catalog file is ErrNotCatalog.
// Each data file is handed over only when it was read whole, but a
// damaged file later on stops the reading after earlier ones were handed
// over: the caller must be able to undo them.
func ReadCatalog(r io.Reader, head func(CatalogHeader) error, each func(CatalogFile, []CatalogIDs) error) error {
	tr := tar.NewReader(r)
	th, err := tr.Next()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotCatalog, err)
	}
	if th.Name != CatalogName {
		return fmt.Errorf("%w: first member is %q", ErrNotCatalog, th.Name)
	}
	b, err := ReadMember(tr, th, MaxJSON)
	if err != nil {
		return err
	}
	var h CatalogHeader
	if err := DecodeJSON(b, &h); err != nil {
		return err
	}
	if h.Format != Version || h.Barcode == "" || h.Cartridge == "" || h.File < 2 || h.File > MaxCatalogFiles || h.Chunks < 0 {
		return fmt.Errorf("%w: catalog header of format %d, barcode %q, uuid %q, file %d, %d chunks", ErrMalformed, h.Format, h.Barcode, h.Cartridge, h.File, h.Chunks)
	}
	if err := head(h); err != nil {
		return err
	}
	chunks := 0
	for n := 1; n < h.File; n++ {
		dir := catalogDir(h.Barcode, n)
		th, err := tr.Next()
		if err != nil {
			return fmt.Errorf("%w: catalog of %s: data file %d: %v", ErrMalformed, h.Barcode, n, err)
		}
		if th.Name != dir+"/file.json" {
			return fmt.Errorf("%w: catalog of %s: member %q where %s/file.json belongs", ErrMalformed, h.Barcode, th.Name, dir)
		}
		b, err := ReadMember(tr, th, MaxCatalogJSON)
		if err != nil {
			return err
		}
		var f CatalogFile
		if err := json.Unmarshal(b, &f); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrMalformed, th.Name, err)
		}
		if f.File != n || len(f.Chunks) > MaxCatalogParts {
			return fmt.Errorf("%w: %s says file %d with %d companies", ErrMalformed, th.Name, f.File, len(f.Chunks))
		}
		ids := make([]CatalogIDs, 0, len(f.Chunks))
		for _, p := range f.Chunks {
			if p.Count < 0 || p.Count > MaxCatalogChunks || p.Company == "" || slices.ContainsFunc(ids, func(c CatalogIDs) bool { return c.Company == p.Company }) {
				return fmt.Errorf("%w: %s: %d chunks of company %q (at most %d, each company once)", ErrMalformed, th.Name, p.Count, p.Company, MaxCatalogChunks)
			}
			th, err := tr.Next()
			if err != nil {
				return fmt.Errorf("%w: catalog of %s: chunk ids of %s in file %d: %v", ErrMalformed, h.Barcode, p.Company, n, err)
			}
			if th.Name != dir+"/"+p.Company+".ids" || th.Size != int64(32*p.Count) {
				return fmt.Errorf("%w: catalog of %s: member %q of %d bytes where %s/%s.ids of %d belongs", ErrMalformed, h.Barcode, th.Name, th.Size, dir, p.Company, 32*p.Count)
			}
			raw, err := ReadMember(tr, th, 32*MaxCatalogChunks)
			if err != nil {
				return err
			}
			c := CatalogIDs{Company: p.Company, IDs: make([][32]byte, p.Count)}
			for i := range c.IDs {
				copy(c.IDs[i][:], raw[32*i:])
			}
			ids = append(ids, c)
			chunks += p.Count
		}
		if chunks > h.Chunks {
			return fmt.Errorf("%w: catalog of %s lists more than the %d chunks its header says", ErrMalformed, h.Barcode, h.Chunks)
		}
		if err := each(f, ids); err != nil {
			return err
		}
	}
	if chunks != h.Chunks {
		return fmt.Errorf("%w: catalog of %s lists %d chunks, its header says %d", ErrMalformed, h.Barcode, chunks, h.Chunks)
	}
	if _, err := tr.Next(); err != io.EOF {
		return fmt.Errorf("%w: catalog of %s: a member after its last data file (%v)", ErrMalformed, h.Barcode, err)
	}
	return nil
}
