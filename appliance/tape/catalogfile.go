package tape

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/format"
)

// The catalog file at the end of a cartridge (format/catalog.go,
// docs/tape.md "The catalog file").

// writeCatalogFile writes the cartridge's catalog file at the tape's
// position, which must be right after its last complete data file: what
// the catalog records of it, closed by a filemark. It is not a data file:
// the cartridge's file count does not include it, and the next job
// appending to the cartridge writes over it.
func (s *Service) writeCatalogFile(ctx context.Context, d Drive, barcode string) error {
	cc, err := s.cat.CartridgeContents(barcode)
	if err != nil {
		return fmt.Errorf("catalog file of %s: %w", barcode, err)
	}
	if len(cc.Files) == 0 {
		return nil
	}
	cr := cc.Cartridge
	h := format.CatalogHeader{Barcode: barcode, Cartridge: cr.UUID, Pool: cr.Pool, MediaSet: cr.MediaSet, SetSeq: cr.SetSeq,
		SetCreated: cc.MediaSet.Created, SetCartridges: cc.MediaSet.Cartridges, File: cr.Files, Full: cr.State == catalog.CartFull,
		Written: s.clk.Now().UTC()}
	for _, ch := range cc.Chunks {
		h.Chunks += len(ch)
	}
	if len(cc.Files) != cr.Files-1 {
		return fmt.Errorf("catalog file of %s: %d data file records for %d files", barcode, len(cc.Files), cr.Files-1)
	}
	bw := format.NewBlockWriter(ctx, d, sentinels)
	cw, err := format.NewCatalogWriter(bw, h)
	if err != nil {
		return fmt.Errorf("catalog file of %s: %w", barcode, err)
	}
	for _, f := range cc.Files {
		cf := format.CatalogFile{File: f.File, MediaSet: f.MediaSet, Written: f.Written, Bytes: f.Bytes, Block: f.Block, BlockKnown: f.BlockKnown}
		for _, tc := range cc.Copies[f.File] {
			vi := format.VersionInfo{Company: tc.Company, Computer: tc.Computer, Config: tc.Config, Seq: tc.Seq, Started: tc.Started,
				Finished: tc.Finished, ManifestID: hex.EncodeToString(tc.ManifestID[:]), MediaSet: tc.MediaSet}
			for _, r := range tc.Files {
				vi.Files = append(vi.Files, format.FileRef{Barcode: r.Barcode, File: r.File})
			}
			cf.Versions = append(cf.Versions, format.CatalogVersion{VersionInfo: vi, Written: tc.Written})
		}
		var ids []format.CatalogIDs
		for _, ch := range cc.Chunks[f.File] {
			if n := len(ids); n == 0 || ids[n-1].Company != ch.Company {
				ids = append(ids, format.CatalogIDs{Company: ch.Company})
			}
			ids[len(ids)-1].IDs = append(ids[len(ids)-1].IDs, ch.ID)
		}
		if err := cw.File(cf, ids); err != nil {
			return fmt.Errorf("catalog file of %s: %w", barcode, err)
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("catalog file of %s: %w", barcode, err)
	}
	if err := bw.Close(); err != nil {
		return fmt.Errorf("catalog file of %s: %w", barcode, err)
	}
	if err := d.WriteFilemarks(ctx, 1); err != nil && !errors.Is(err, drive.ErrEarlyWarning) {
		return fmt.Errorf("catalog file of %s: filemark: %w", barcode, err)
	}
	s.log.Info("catalog file written", zap.String("barcode", barcode), zap.Int("file", cr.Files), zap.Int("data_files", len(cc.Files)),
		zap.Int("chunks", h.Chunks), zap.Int64("bytes", bw.Written()))
	return nil
}

// errNoCatalog: the cartridge has no usable catalog file; the scan reads
// every file.
var errNoCatalog = errors.New("no usable catalog file")

// scanCatalog rebuilds a cartridge's records from its catalog file: SPACE
// to the end of data, back over the last two filemarks and forward over
// one, to the start of the last file, and read it. Anything but a catalog
// file of this cartridge there (a job stopped before writing one, a drive
// that cannot space backwards, a damaged file) is errNoCatalog, after
// undoing whatever it recorded: the caller then reads every file.
func (s *Service) scanCatalog(ctx context.Context, d Drive, l format.Label, res *ScanResult) error {
	undo := func(cause error) error {
		res.Files, res.Versions, res.Chunks = 0, 0, 0
		if err := s.cat.Tape(catalog.KindTapeLabel, catalog.TapeLabelCmd{Barcode: l.Barcode, UUID: l.UUID, Pool: l.Pool, Labelled: l.Labelled}); err != nil {
			return err
		}
		return fmt.Errorf("%w: %w", errNoCatalog, cause)
	}
	if err := d.SpaceEOD(ctx); err != nil {
		return fmt.Errorf("%w: space to the end of data: %w", errNoCatalog, err)
	}
	if err := d.SpaceFiles(ctx, -2); err != nil {
		return fmt.Errorf("%w: space back over the last two filemarks: %w", errNoCatalog, err)
	}
	if err := d.SpaceFiles(ctx, 1); err != nil {
		return fmt.Errorf("%w: space to the last file: %w", errNoCatalog, err)
	}
	br := format.NewBlockReader(ctx, d, sentinels)
	var hdr format.CatalogHeader
	var set catalog.MediaSet
	err := format.ReadCatalog(br, func(h format.CatalogHeader) error {
		if h.Barcode != l.Barcode || h.Cartridge != l.UUID {
			return fmt.Errorf("%w: the last file is the catalog of %s (uuid %s), not of this cartridge (uuid %s)", format.ErrMalformed, h.Barcode, h.Cartridge, l.UUID)
		}
		hdr = h
		set = catalog.MediaSet{ID: h.MediaSet, Pool: h.Pool, Created: h.SetCreated}
		return nil
	}, func(f format.CatalogFile, ids []format.CatalogIDs) error {
		cmd := catalog.TapeFileCmd{File: catalog.TapeFile{Barcode: l.Barcode, File: f.File, MediaSet: f.MediaSet, Written: f.Written,
			Bytes: f.Bytes, Block: f.Block, BlockKnown: f.BlockKnown}, Pool: hdr.Pool, SetCreated: set.Created,
			Full: hdr.Full && f.File == hdr.File-1}
		for _, p := range ids {
			for _, id := range p.IDs {
				cmd.Chunks = append(cmd.Chunks, catalog.TapeChunk{Company: p.Company, ID: id})
			}
		}
		for _, v := range f.Versions {
			tc, err := tapeCopyOf(v.VersionInfo, v.Written)
			if err != nil {
				return err
			}
			cmd.Copies = append(cmd.Copies, tc)
		}
		if err := s.cat.Tape(catalog.KindTapeFile, cmd); err != nil {
			return fmt.Errorf("record tape file %d: %w", f.File, err)
		}
		res.Files++
		res.Versions += len(cmd.Copies)
		res.Chunks += len(cmd.Chunks)
		return nil
	})
	if err == nil {
		err = br.Drain()
	}
	if err != nil {
		return undo(err)
	}
	res.Catalog = fmt.Sprintf("read from the catalog file (file %d)", hdr.File)
	return nil
}

// tapeCopyOf is the tape copy a version.json (or a catalog file's entry)
// describes.
func tapeCopyOf(vi format.VersionInfo, written time.Time) (catalog.TapeCopy, error) {
	tc := catalog.TapeCopy{Company: vi.Company, Computer: vi.Computer, Config: vi.Config, Seq: vi.Seq, MediaSet: vi.MediaSet,
		Started: vi.Started, Finished: vi.Finished, Written: written.UTC()}
	if _, err := hex.Decode(tc.ManifestID[:], []byte(vi.ManifestID)); err != nil || len(vi.ManifestID) != 64 {
		return tc, fmt.Errorf("%w: version %s/%s@%d: manifest id %q", format.ErrMalformed, vi.Computer, vi.Config, vi.Seq, vi.ManifestID)
	}
	if len(vi.Files) > format.MaxFiles {
		return tc, fmt.Errorf("%w: version %s/%s@%d names %d files", format.ErrMalformed, vi.Computer, vi.Config, vi.Seq, len(vi.Files))
	}
	for _, f := range vi.Files {
		tc.Files = append(tc.Files, catalog.TapeFileRef{Barcode: f.Barcode, File: f.File})
	}
	return tc, nil
}
