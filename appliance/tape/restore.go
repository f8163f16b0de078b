package tape

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/format"
	"vaultnode/internal/pack"
)

// RestoreRequest names a version to bring back from tape.
type RestoreRequest struct {
	Computer string `json:"computer"`
	Config   string `json:"config"`
	Seq      uint64 `json:"seq"`
}

// RestoreResult is a restore's result.
type RestoreResult struct {
	Version    string   `json:"version"`
	MediaSet   string   `json:"media_set"`
	Cartridges []string `json:"cartridges"`
	Files      int      `json:"files"`  // tape files read
	Chunks     int      `json:"chunks"` // chunks stored back into the vault
	Bytes      int64    `json:"bytes"`
}

// Needs returns the tape copy a restore of the version reads: the first
// whose cartridges are all in the library, else an error wrapping
// ErrOffsite naming the cartridges to bring back.
func (s *Service) Needs(req RestoreRequest) (catalog.TapeCopy, error) {
	copies, err := s.cat.TapeCopies(req.Computer, req.Config, req.Seq)
	if err != nil {
		return catalog.TapeCopy{}, err
	}
	if len(copies) == 0 {
		return catalog.TapeCopy{}, fmt.Errorf("%s@%d of %s: %w", req.Config, req.Seq, req.Computer, ErrNotOnTape)
	}
	var missing []string
	for _, c := range copies {
		var out []string
		for _, bc := range c.Cartridges() {
			cr, err := s.cat.Cartridge(bc)
			if err != nil || cr.Where == catalog.WhereOffsite {
				out = append(out, bc)
			}
		}
		if len(out) == 0 {
			return c, nil
		}
		if missing == nil || len(out) < len(missing) {
			missing = out
		}
	}
	return copies[0], fmt.Errorf("%w: %s@%d of %s needs %s: put them into the import/export slot and run `vaultctl tape import`",
		ErrOffsite, req.Config, req.Seq, req.Computer, strings.Join(missing, ", "))
}

// Restore reads a version's tape files back into the vault: every chunk
// of its company the vault lacks is checked and stored, then the version
// is recorded again (and can be restored as usual).
func (s *Service) Restore(ctx context.Context, prog *jobs.Progress, req RestoreRequest) (*RestoreResult, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	end := s.begin(fmt.Sprintf("restore %s@%d of %s", req.Config, req.Seq, req.Computer))
	res, err := s.restore(ctx, prog, req)
	if err != nil {
		s.alertsAfterError(ctx)
	}
	end(err)
	return res, err
}

func (s *Service) restore(ctx context.Context, prog *jobs.Progress, req RestoreRequest) (*RestoreResult, error) {
	res := &RestoreResult{Version: fmt.Sprintf("%s/%s@%d", req.Computer, req.Config, req.Seq)}
	if _, err := s.lib.Changer.Sync(ctx, s.rec()); err != nil {
		return res, fmt.Errorf("read the library: %w", err)
	}
	tc, err := s.Needs(req)
	if err != nil {
		return res, err
	}
	res.MediaSet, res.Cartridges = tc.MediaSet, tc.Cartridges()
	prog.SetTotals(int64(len(tc.Files)), 0)
	byCart := map[string][]int{}
	for _, f := range tc.Files {
		byCart[f.Barcode] = append(byCart[f.Barcode], f.File)
	}
	var lastAddr uint16
	for _, bc := range res.Cartridges {
		cr, err := s.cat.Cartridge(bc)
		if err != nil {
			return res, err
		}
		d, inv, err := s.load(ctx, bc, 0)
		if err != nil {
			return res, err
		}
		e, _ := inv.Find(bc)
		lastAddr = e.Address
		if err := checkLabel(ctx, d, cr); err != nil {
			return res, err
		}
		files := byCart[bc]
		slices.Sort(files)
		recs, err := s.cat.TapeFiles(bc)
		if err != nil {
			return res, err
		}
		marks := map[int]drive.Mark{}
		for _, r := range recs {
			marks[r.File] = drive.Mark{File: uint64(r.File), Block: r.Block, BlockKnown: r.BlockKnown}
		}
		pos := 1
		for _, f := range files {
			// A file further on is reached by LOCATE to where it started
			// (or REWIND and SPACE on a drive that cannot), never by
			// reading the files before it.
			if f > pos {
				m, ok := marks[f]
				if !ok {
					m = drive.Mark{File: uint64(f)}
				}
				if err := d.SeekFile(ctx, m); err != nil {
					return res, fmt.Errorf("reach tape file %d of %s: %w", f, bc, err)
				}
			}
			if err := s.restoreFile(ctx, d, tc.Company, res); err != nil {
				return res, fmt.Errorf("read tape file %d of %s: %w", f, bc, err)
			}
			pos = f + 1
			res.Files++
			prog.Add(1, 0)
		}
		if _, err := s.unload(ctx, lastAddr); err != nil {
			return res, err
		}
	}
	if err := s.sink.AddVersion(ctx, tc.Company, tc.ManifestID); err != nil {
		return res, fmt.Errorf("record %s again: %w", res.Version, err)
	}
	s.log.Info("version restored from tape", zap.String("version", res.Version), zap.Strings("cartridges", res.Cartridges), zap.Int("chunks", res.Chunks))
	return res, nil
}

// restoreBatch bounds the entries stored at once.
const restoreBatch = 256

// restoreFile reads one data file and stores the company's chunks the
// vault lacks; the tape ends after the file's filemark.
func (s *Service) restoreFile(ctx context.Context, d Drive, company string, res *RestoreResult) error {
	br := format.NewBlockReader(ctx, d, sentinels)
	tr := tar.NewReader(br)
	var ents [][]byte
	var plain []bool
	var ids [][32]byte
	flush := func() error {
		if len(ents) == 0 {
			return nil
		}
		have, err := s.sink.Has(company, ids)
		if err != nil {
			return err
		}
		var e2 [][]byte
		var p2 []bool
		for i := range ents {
			if !have[i] {
				e2, p2 = append(e2, ents[i]), append(p2, plain[i])
			}
		}
		if len(e2) > 0 {
			if err := s.sink.Put(ctx, company, e2, p2); err != nil {
				return err
			}
		}
		res.Chunks += len(e2)
		ents, plain, ids = nil, nil, nil
		return nil
	}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		co, id, pl, ok := format.ParseChunkMember(h.Name)
		if !ok || co != company {
			continue
		}
		b, err := format.ReadMember(tr, h, pack.EntryHeaderSize+pack.MaxPlain+pack.Overhead+pack.MaxPlain/64+1024)
		if err != nil {
			return err
		}
		res.Bytes += int64(len(b))
		ents, plain, ids = append(ents, b), append(plain, pl), append(ids, id)
		if len(ents) >= restoreBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	return br.Drain()
}

// errCatalogFile: the tape file read is a catalog file, not a data file.
var errCatalogFile = errors.New("a catalog file")

// ScanResult is what a scan found on a cartridge.
type ScanResult struct {
	Label    format.Label `json:"label"`
	Files    int          `json:"files"`    // data files recorded
	Versions int          `json:"versions"` // tape copies recorded
	Chunks   int          `json:"chunks"`
	Partial  string       `json:"partial,omitempty"` // a last file not complete on tape, left out
	// Catalog says whether the records came from the cartridge's catalog
	// file (one file read) or, when it has none or it is damaged, why
	// every file was read.
	Catalog      string `json:"catalog"`
	FromCatalog  bool   `json:"from_catalog"`
	CatalogFiles int    `json:"catalog_files,omitempty"` // catalog files met while reading every file
}

// Scan rebuilds a cartridge's records in the catalog: its label, every
// complete data file, the chunks in them and the tape copies of the
// versions that end in them. It reads them from the cartridge's catalog
// file when its last file is one, else it reads every file from the start.
func (s *Service) Scan(ctx context.Context, barcode string) (*ScanResult, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	end := s.begin("scan " + barcode)
	res, err := s.scan(ctx, barcode)
	if err != nil {
		s.alertsAfterError(ctx)
	}
	end(err)
	return res, err
}

func (s *Service) scan(ctx context.Context, barcode string) (*ScanResult, error) {
	res := &ScanResult{}
	d, inv, err := s.load(ctx, barcode, 0)
	if err != nil {
		return res, err
	}
	e, _ := inv.Find(barcode)
	defer func() {
		if _, err := s.unload(context.WithoutCancel(ctx), e.Address); err != nil {
			s.log.Warn("unload after scan", zap.Error(err))
		}
	}()
	l, err := readLabel(ctx, d)
	if err != nil {
		return res, fmt.Errorf("scan %s: %w", barcode, err)
	}
	res.Label = l
	if l.Barcode != barcode {
		return res, fmt.Errorf("scan %s: %w: its label says barcode %s", barcode, ErrWrongCartridge, l.Barcode)
	}
	if err := s.cat.Tape(catalog.KindTapeLabel, catalog.TapeLabelCmd{Barcode: barcode, UUID: l.UUID, Pool: l.Pool, Labelled: l.Labelled}); err != nil {
		return res, err
	}
	// The fast way: the catalog file at the end of the cartridge.
	err = s.scanCatalog(ctx, d, l, res)
	if err == nil {
		res.FromCatalog = true
		return res, nil
	}
	if !errors.Is(err, errNoCatalog) {
		return res, fmt.Errorf("scan %s: %w", barcode, err)
	}
	s.log.Info("scan reads every file", zap.String("barcode", barcode), zap.Error(err))
	res.Catalog = err.Error() + ": every file read"
	if _, err := readLabel(ctx, d); err != nil {
		return res, fmt.Errorf("scan %s: %w", barcode, err)
	}
	for file := 1; ; file++ {
		mark, err := d.MarkHere(ctx, uint64(file))
		if err != nil {
			return res, fmt.Errorf("scan %s file %d: %w", barcode, file, err)
		}
		cmd, err := scanFile(ctx, d)
		if errors.Is(err, errCatalogFile) {
			// An earlier job's catalog file: what follows it (if
			// anything) was written after it.
			res.CatalogFiles++
			continue
		}
		if errors.Is(err, format.ErrEndOfData) {
			if cmd != nil {
				res.Partial = fmt.Sprintf("file %d ends without its filemark (a job stopped while writing it)", file)
			}
			return res, nil
		}
		if err != nil {
			return res, fmt.Errorf("scan %s file %d: %w", barcode, file, err)
		}
		if cmd.File.File != file || cmd.File.Barcode != barcode {
			return res, fmt.Errorf("scan %s file %d: %w: its header says %s file %d", barcode, file, format.ErrMalformed, cmd.File.Barcode, cmd.File.File)
		}
		cmd.File.Block, cmd.File.BlockKnown = mark.Block, mark.BlockKnown
		if err := s.cat.Tape(catalog.KindTapeFile, *cmd); err != nil {
			return res, fmt.Errorf("scan %s file %d: %w", barcode, file, err)
		}
		res.Files++
		res.Versions += len(cmd.Copies)
		res.Chunks += len(cmd.Chunks)
	}
}

// scanFile reads one data file into the command recording it. A file
// cut short by the end of data returns a non-nil command and an error
// wrapping format.ErrEndOfData; no file at all, a nil one.
func scanFile(ctx context.Context, d Drive) (*catalog.TapeFileCmd, error) {
	cd := &countingReader{Drive: d}
	br := format.NewBlockReader(ctx, cd, sentinels)
	tr := tar.NewReader(br)
	h, err := tr.Next()
	if err != nil {
		if errors.Is(err, format.ErrEndOfData) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: no file header: %v", format.ErrMalformed, err)
	}
	if h.Name == format.CatalogName {
		return nil, errors.Join(errCatalogFile, br.Drain())
	}
	if h.Name != format.FileHeadName {
		return nil, fmt.Errorf("%w: first member %q", format.ErrMalformed, h.Name)
	}
	b, err := format.ReadMember(tr, h, format.MaxJSON)
	if err != nil {
		return nil, err
	}
	var fh format.FileHeader
	if err := format.DecodeJSON(b, &fh); err != nil {
		return nil, err
	}
	cmd := &catalog.TapeFileCmd{File: catalog.TapeFile{Barcode: fh.Barcode, File: fh.File, MediaSet: fh.MediaSet, Written: fh.Written},
		Pool: fh.Pool, SetCreated: fh.Written}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return cmd, err
		}
		if co, id, _, ok := format.ParseChunkMember(h.Name); ok {
			if len(cmd.Chunks) >= catalog.MaxFileChunks {
				return cmd, fmt.Errorf("%w: more than %d chunks in one file", format.ErrMalformed, catalog.MaxFileChunks)
			}
			cmd.Chunks = append(cmd.Chunks, catalog.TapeChunk{Company: co, ID: id})
			continue
		}
		if !strings.HasSuffix(h.Name, "/version.json") {
			continue
		}
		b, err := format.ReadMember(tr, h, format.MaxJSON)
		if err != nil {
			return cmd, err
		}
		var vi format.VersionInfo
		if err := format.DecodeJSON(b, &vi); err != nil {
			return cmd, err
		}
		tc, err := tapeCopyOf(vi, h.ModTime)
		if err != nil {
			return cmd, fmt.Errorf("%s: %w", h.Name, err)
		}
		cmd.Copies = append(cmd.Copies, tc)
	}
	if err := br.Drain(); err != nil {
		return cmd, err
	}
	cmd.File.Bytes = cd.n
	return cmd, nil
}

// countingReader counts the bytes of the blocks read.
type countingReader struct {
	Drive
	n int64
}

func (c *countingReader) ReadBlock(ctx context.Context, buf []byte) (int, error) {
	n, err := c.Drive.ReadBlock(ctx, buf)
	if err == nil {
		c.n += int64(n)
	}
	return n, err
}
