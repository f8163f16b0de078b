package tape

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/format"
	"vaultnode/internal/pack"
	"vaultnode/internal/profile"
)

// KindTape is the daily tape job; KindTapeRestore restores a version from
// tape into the vault.
const (
	KindTape        jobs.Kind = "tape"
	KindTapeRestore jobs.Kind = "tape-restore"
)

// JobResult is a tape job's result.
type JobResult struct {
	Versions   int      `json:"versions"`   // versions whose copy is complete on tape
	Files      int      `json:"files"`      // data files written
	Bytes      int64    `json:"bytes"`      // bytes written to tape
	Cartridges []string `json:"cartridges"` // cartridges written to
	Exported   []string `json:"exported"`   // moved to import/export for off-site storage
	Alerts     []string `json:"alerts"`     // TapeAlert flags after the job
	Left       int      `json:"left"`       // versions not written (an error stopped the job)
	MediaSets  []string `json:"media_sets"` // media sets written to
	Pools      []string `json:"pools"`      // pools written to
	// CatalogFiles are the cartridges that got their catalog file at the
	// end of the job's writing on them; CatalogMissing those that did not
	// (and why): a scan of those reads every file.
	CatalogFiles   []string `json:"catalog_files"`
	CatalogMissing []string `json:"catalog_missing,omitempty"`
	// Cleaning says what the job did about TapeAlert flags asking for a
	// cleaning (cleaned, no cleaning cartridge, expired one).
	Cleaning []string `json:"cleaning,omitempty"`
}

// errLostFile: the drive hit the end of medium before the file's end; the
// file is not on tape and is written again on the next cartridge.
var errLostFile = errors.New("tape file lost at the end of medium")

// Run is the daily tape job (a jobs.Func): every version of the
// configurations written to tape that has no tape copy yet goes to its
// pool's media set. A data file is recorded in the catalog only after its
// closing filemark is written; a drive error stops the job, leaving the
// catalog with what is on tape; the next run resumes.
func (s *Service) Run(ctx context.Context, prog *jobs.Progress) (any, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer profile.Span("tape")()
	end := s.begin("tape job")
	res, err := s.run(ctx, prog)
	end(err)
	s.m.carts.Set(float64(len(res.Cartridges)))
	if err != nil {
		// Physical truth again before anything else uses the library.
		if _, serr := s.lib.Changer.Sync(context.WithoutCancel(ctx), s.rec()); serr != nil {
			s.log.Error("read the library after a failed tape job", zap.Error(serr))
		}
		return res, err
	}
	return res, nil
}

func newResult() *JobResult {
	return &JobResult{Cartridges: []string{}, Exported: []string{}, MediaSets: []string{}, Pools: []string{}, CatalogFiles: []string{}}
}

// merge adds a writer's result.
func (r *JobResult) merge(o *JobResult) {
	r.Versions += o.Versions
	r.Files += o.Files
	r.Bytes += o.Bytes
	r.Cartridges = append(r.Cartridges, o.Cartridges...)
	r.Exported = append(r.Exported, o.Exported...)
	r.Alerts = append(r.Alerts, o.Alerts...)
	r.MediaSets = append(r.MediaSets, o.MediaSets...)
	r.Pools = append(r.Pools, o.Pools...)
	r.CatalogFiles = append(r.CatalogFiles, o.CatalogFiles...)
	r.CatalogMissing = append(r.CatalogMissing, o.CatalogMissing...)
	r.Cleaning = append(r.Cleaning, o.Cleaning...)
}

// run writes the pools' versions with every drive at once: one writer per
// drive, each taking whole pools (a media set is written in order by one
// drive), the first ones in pool order to the drives in address order,
// the rest to whichever drive is free first. A writer whose drive fails
// stops; the others go on and take the pools it did not start.
func (s *Service) run(ctx context.Context, prog *jobs.Progress) (*JobResult, error) {
	res := newResult()
	if _, err := s.lib.Changer.Sync(ctx, s.rec()); err != nil {
		return res, fmt.Errorf("read the library: %w", err)
	}
	vers, err := s.src.Versions(ctx)
	if err != nil {
		return res, fmt.Errorf("list versions for tape: %w", err)
	}
	prog.SetTotals(int64(len(vers)), 0)
	byPool := map[string][]Version{}
	for _, v := range vers {
		byPool[v.Pool] = append(byPool[v.Pool], v)
	}
	var pools []string
	for p := range byPool {
		pools = append(pools, p)
	}
	sort.Strings(pools)
	res.Left = len(vers)
	drives := s.sortedDrives()
	n := min(len(drives), len(pools))
	rest := make(chan string, len(pools))
	for _, p := range pools[n:] {
		rest <- p
	}
	close(rest)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func(addr uint16, first string) {
			defer wg.Done()
			defer s.release(addr)
			defer s.driveBusy(addr)()
			for name := first; name != ""; {
				r, err := s.writePool(ctx, prog, name, addr, byPool[name])
				mu.Lock()
				res.merge(r)
				if err != nil {
					errs = append(errs, fmt.Errorf("pool %s (drive %d): %w", name, addr, err))
				}
				mu.Unlock()
				if err != nil {
					s.driveStatus(addr, func(ds *DriveStatus) { ds.Error = err.Error() })
					if !errors.Is(err, ErrNoCartridge) && !errors.Is(err, ErrWrongCartridge) {
						return // the drive may be at fault: the others take the rest
					}
				}
				name = <-rest
			}
		}(drives[i], pools[i])
	}
	wg.Wait()
	res.Left = len(vers) - res.Versions
	return res, errors.Join(errs...)
}

// writePool writes one pool's versions with drive addr.
func (s *Service) writePool(ctx context.Context, prog *jobs.Progress, name string, addr uint16, vers []Version) (*JobResult, error) {
	res := newResult()
	pool, err := s.cat.TapePool(name)
	if err != nil {
		return res, fmt.Errorf("pool %q: %w", name, err)
	}
	s.driveStatus(addr, func(ds *DriveStatus) { ds.Pool = name })
	w := &writer{s: s, pool: pool, res: res, prog: prog, drive: addr, committed: map[chunkKey]catalog.TapeFileRef{},
		bufs: newEntryBuffers()}
	err = w.writeAll(ctx, vers)
	if w.d != nil {
		flags, out := s.alerts(ctx, addr, w.d)
		res.Alerts = append(res.Alerts, out...)
		if _, uerr := s.unload(context.WithoutCancel(ctx), w.addr); uerr != nil {
			s.log.Warn("unload after the tape job", zap.Error(uerr))
			err = errors.Join(err, uerr)
		}
		s.afterAlerts(ctx, addr, flags, res)
	}
	if err != nil {
		return res, err
	}
	res.Pools = append(res.Pools, name)
	if pool.Export && len(w.used) > 0 {
		if err := s.export(ctx, w, res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// export moves the cartridges a job wrote to the import/export slots and
// closes their media set: the next job starts a new one.
func (s *Service) export(ctx context.Context, w *writer, res *JobResult) error {
	if err := s.cat.Tape(catalog.KindTapeCloseSet, catalog.TapeCloseSetCmd{MediaSet: w.set.ID}); err != nil {
		return err
	}
	for _, bc := range w.used {
		if _, err := s.lib.Changer.Export(ctx, bc, s.rec()); err != nil {
			return fmt.Errorf("export %s for off-site storage: %w (take out the cartridges in the import/export slots, then `vaultctl tape move`)", bc, err)
		}
		res.Exported = append(res.Exported, bc)
	}
	return nil
}

type chunkKey struct {
	company string
	id      [32]byte
}

// writer writes one pool's versions.
type writer struct {
	s     *Service
	pool  catalog.TapePool
	res   *JobResult
	prog  *jobs.Progress
	drive uint16 // the drive this writer uses

	set  catalog.MediaSet
	cart catalog.Cartridge
	d    Drive
	addr uint16
	used []string

	// The open data file.
	bw         *blockStream // nil when no file is open
	spare      [][]byte     // block buffers between files
	tw         *tar.Writer
	open       bool
	fileChunks []catalog.TapeChunk
	fileCopies []catalog.TapeCopy
	inFile     map[chunkKey]bool
	mark       drive.Mark // where the open file starts
	opened     time.Time  // when the open file was opened (its first block is queued later: bw.FirstQueued)
	cur        int        // the version being written
	firstVer   int        // the first version with a member in the open file

	committed map[chunkKey]catalog.TapeFileRef
	bufs      *entryBuffers // entry buffers reused from chunk to chunk
	ahead     *idsAhead     // the next version's chunk ids, being listed
}

func (w *writer) ref() catalog.TapeFileRef {
	return catalog.TapeFileRef{Barcode: w.cart.Barcode, File: w.cart.Files}
}

// endStream stops the open file's block stream, if any: nothing writes to
// the drive after it returns.
func (w *writer) endStream() {
	if w.bw != nil {
		w.spare = w.bw.abort()
		w.bw = nil
	}
}

func (w *writer) writeAll(ctx context.Context, vers []Version) error {
	defer w.endStream()
	defer w.stopAhead()
	if err := w.chooseSet(ctx); err != nil {
		return err
	}
	for i := 0; ; {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		switch {
		case i < len(vers) && !w.open:
			w.cur = i
			err = w.openFile(ctx)
		case i < len(vers):
			w.cur = i
			if err = w.version(ctx, vers, i); err == nil {
				i++
			}
		case w.open:
			err = w.closeFile(ctx, false)
		default:
			w.catalogFile(ctx)
			return nil
		}
		if errors.Is(err, errLostFile) {
			// The cartridge filled before the file's end: nothing of the
			// file is recorded; write it again from its first version on
			// the next cartridge.
			w.s.log.Warn("end of medium inside a tape file: continuing on the next cartridge", zap.String("barcode", w.cart.Barcode))
			w.open = false
			w.endStream()
			if w.cart.Files >= 2 {
				// No room is left after the end of medium: the cartridge
				// ends with its last complete data file.
				w.res.CatalogMissing = append(w.res.CatalogMissing, w.cart.Barcode+
					": the end of medium came inside a data file without an early warning, leaving no room for a catalog file (a scan reads every file)")
			}
			if err := w.s.cat.Tape(catalog.KindTapeState, catalog.TapeStateCmd{Barcode: w.cart.Barcode, State: catalog.CartFull}); err != nil {
				return err
			}
			if err := w.nextCartridge(ctx); err != nil {
				return err
			}
			i = w.firstVer
			continue
		}
		if err != nil {
			return err
		}
	}
}

// version writes one version's chunks not yet in the media set, its
// manifest entry and its version.json.
func (w *writer) version(ctx context.Context, vers []Version, i int) error {
	v := vers[i]
	ids, err := w.idsOf(ctx, vers, i)
	if err != nil {
		return err
	}
	// Which of them the media set already holds (earlier jobs).
	files := map[catalog.TapeFileRef]bool{}
	cids := make([]catalog.ID, len(ids))
	for i, id := range ids {
		cids[i] = id
	}
	onSet := make([]bool, len(ids))
	err = w.s.cat.TapeChunks(w.set.ID, v.Company, cids, func(i int, ref catalog.TapeFileRef) {
		onSet[i] = true
		files[ref] = true
	})
	if err != nil {
		return err
	}
	var todo []chunkKey
	for i, id := range ids {
		k := chunkKey{v.Company, id}
		if _, ok := w.committed[k]; !onSet[i] && !ok && !w.inFile[k] {
			todo = append(todo, k)
		}
	}
	rd := newEntryReader(ctx, w.s.src, w.bufs, todo)
	defer rd.Close()
	for i, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if onSet[i] {
			continue
		}
		k := chunkKey{v.Company, id}
		if ref, ok := w.committed[k]; ok {
			files[ref] = true
			continue
		}
		if w.inFile[k] {
			continue
		}
		if err := w.chunk(ctx, rd, k); err != nil {
			return err
		}
		if err := w.maybeRotate(ctx, files); err != nil {
			return err
		}
	}
	files[w.ref()] = true
	tc := catalog.TapeCopy{Company: v.Company, Computer: v.Computer, Config: v.Config, Seq: v.Seq, MediaSet: w.set.ID,
		Started: v.Started, Finished: v.Finished, ManifestID: v.ManifestID, Written: w.s.clk.Now().UTC()}
	for f := range files {
		tc.Files = append(tc.Files, f)
	}
	slices.SortFunc(tc.Files, func(a, b catalog.TapeFileRef) int {
		if a.Barcode != b.Barcode {
			if a.Barcode < b.Barcode {
				return -1
			}
			return 1
		}
		return a.File - b.File
	})
	info := format.VersionInfo{Company: v.Company, Computer: v.Computer, Config: v.Config, Seq: v.Seq, Started: v.Started, Finished: v.Finished,
		ManifestID: hex.EncodeToString(v.ManifestID[:]), MediaSet: w.set.ID}
	for _, f := range tc.Files {
		info.Files = append(info.Files, format.FileRef{Barcode: f.Barcode, File: f.File})
	}
	if err := w.member(func() error {
		return format.WriteJSON(w.tw, format.VersionDir(v.Company, v.Computer, v.Config, v.Seq)+"/version.json", info, tc.Written)
	}); err != nil {
		return err
	}
	w.fileCopies = append(w.fileCopies, tc)
	w.prog.Add(1, 0)
	return w.maybeRotate(ctx, files)
}

// versionIDs lists the ids of every chunk version v needs, each once: its
// listing chunks, every chunk its listing names, and its manifest.
func versionIDs(ctx context.Context, src Source, v Version) ([][32]byte, error) {
	var ids [][32]byte
	seen := map[[32]byte]bool{}
	add := func(batch [][32]byte) error {
		for _, id := range batch {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
		return nil
	}
	if err := src.Chunks(ctx, v, add); err != nil {
		return nil, fmt.Errorf("read version %s/%s@%d: %w", v.Computer, v.Config, v.Seq, err)
	}
	add([][32]byte{v.ManifestID})
	return ids, nil
}

// idsAhead lists the next version's chunk ids in a goroutine (owned by the
// writer: stopAhead) while the current version streams: reading a
// version's listing (its chunks opened and decompressed) takes long for a
// computer of many files, and the drive would wait for it between two
// versions of one file.
type idsAhead struct {
	idx    int
	done   chan struct{}
	cancel context.CancelFunc
	ids    [][32]byte
	err    error
}

// idsOf returns the chunk ids of vers[i] (listed ahead when they were) and
// starts listing those of vers[i+1].
func (w *writer) idsOf(ctx context.Context, vers []Version, i int) ([][32]byte, error) {
	var ids [][32]byte
	var err error
	if a := w.ahead; a != nil && a.idx == i {
		w.ahead = nil
		<-a.done
		a.cancel()
		ids, err = a.ids, a.err
	} else {
		w.stopAhead()
		ids, err = versionIDs(ctx, w.s.src, vers[i])
	}
	if err == nil && i+1 < len(vers) {
		actx, cancel := context.WithCancel(ctx)
		a := &idsAhead{idx: i + 1, done: make(chan struct{}), cancel: cancel}
		w.ahead = a
		go func() { // owner: the writer (idsOf, stopAhead)
			defer close(a.done)
			a.ids, a.err = versionIDs(actx, w.s.src, vers[a.idx])
		}()
	}
	return ids, err
}

// stopAhead stops listing ahead and waits for it.
func (w *writer) stopAhead() {
	if a := w.ahead; a != nil {
		w.ahead = nil
		a.cancel()
		<-a.done
	}
}

// maxFileCmd bounds the estimated size of a file's tape_file command,
// well under catalog.MaxCommand: a file ends before its record would not
// fit one command.
const maxFileCmd = 3 << 20

// cmdSize estimates the JSON size of the open file's tape_file command.
func (w *writer) cmdSize() int {
	n := 120 * len(w.fileChunks)
	for _, c := range w.fileCopies {
		n += 400 + 60*len(c.Files)
	}
	return n
}

// member runs one tar write, mapping the drive's end of medium to
// errLostFile.
func (w *writer) member(fn func() error) error {
	before := w.bw.Written()
	err := fn()
	n := w.bw.Written() - before
	w.res.Bytes += n
	w.s.m.bytes.Add(float64(n))
	w.s.setStatus(func(st *Status) { st.Bytes += n })
	w.s.driveStatus(w.drive, func(ds *DriveStatus) { ds.Bytes += n })
	w.prog.Add(0, n)
	if errors.Is(err, drive.ErrEndOfMedium) {
		return fmt.Errorf("%w: %w", errLostFile, err)
	}
	return err
}

func (w *writer) chunk(ctx context.Context, rd *entryReader, k chunkKey) error {
	e, err := rd.Entry(ctx, k)
	if err != nil {
		return fmt.Errorf("read chunk %x of %s: %w", k.id[:8], k.company, err)
	}
	defer rd.Done(e) // the member is copied into the stream's blocks
	body := e
	if w.pool.Plain {
		p, err := w.s.src.Open(k.company, e)
		if err != nil {
			return fmt.Errorf("open chunk %x of %s: %w", k.id[:8], k.company, err)
		}
		body = append(e[:pack.EntryHeaderSize:pack.EntryHeaderSize], p...)
	}
	if err := w.member(func() error {
		return format.WriteMember(w.tw, format.ChunkMember(k.company, k.id, w.pool.Plain), body, 0o600, w.s.clk.Now())
	}); err != nil {
		return err
	}
	w.inFile[k] = true
	w.fileChunks = append(w.fileChunks, catalog.TapeChunk{Company: k.company, ID: k.id})
	return nil
}

// maybeRotate closes the file at the early warning (then goes on on the
// next cartridge), at the file size limit or at the chunk limit; files
// gets the ref of a file closed under a version being written.
func (w *writer) maybeRotate(ctx context.Context, files map[catalog.TapeFileRef]bool) error {
	warn := w.bw.EarlyWarning()
	if !warn && w.bw.Written()+int64(w.bw.Pending()) < w.s.opt.FileLimit && len(w.fileChunks) < catalog.MaxFileChunks-1 &&
		w.cmdSize() < maxFileCmd {
		return nil
	}
	files[w.ref()] = true
	if err := w.closeFile(ctx, warn); err != nil {
		return err
	}
	// The early warning may also have come with the file's last blocks or
	// its filemark: the cartridge is full either way.
	if warn || w.cart.State == catalog.CartFull {
		w.catalogFile(ctx)
		if err := w.nextCartridge(ctx); err != nil {
			return err
		}
	}
	return w.openFile(ctx)
}

func (w *writer) openFile(ctx context.Context) error {
	m, err := w.d.MarkHere(ctx, uint64(w.cart.Files))
	if err != nil {
		return fmt.Errorf("read the position of tape file %d of %s: %w", w.cart.Files, w.cart.Barcode, err)
	}
	w.mark = m
	w.opened = w.s.clk.Now()
	w.endStream()
	w.bw = newStream(ctx, w.s.clk, w.d, w.spare)
	w.bw.keepSums = !w.pool.NoVerify
	w.tw = tar.NewWriter(w.bw)
	w.open = true
	w.firstVer = w.cur
	w.fileChunks, w.fileCopies, w.inFile = nil, nil, map[chunkKey]bool{}
	h := format.FileHeader{Format: format.Version, MediaSet: w.set.ID, Pool: w.pool.Name, Barcode: w.cart.Barcode, Cartridge: w.cart.UUID,
		SetSeq: slices.Index(w.set.Cartridges, w.cart.Barcode), File: w.cart.Files, Written: w.s.clk.Now().UTC(), Encrypted: !w.pool.Plain}
	if h.SetSeq < 0 {
		h.SetSeq = len(w.set.Cartridges)
	}
	return w.member(func() error { return format.WriteJSON(w.tw, format.FileHeadName, h, h.Written) })
}

// closeFile ends the tar, writes the filemark (which flushes the drive's
// buffer: everything before it is on tape) and only then records the file.
func (w *writer) closeFile(ctx context.Context, full bool) error {
	w.open = false
	if err := w.member(w.tw.Close); err != nil {
		return fmt.Errorf("close tape file %d of %s: %w", w.cart.Files, w.cart.Barcode, err)
	}
	if err := w.member(w.bw.Close); err != nil {
		return fmt.Errorf("close tape file %d of %s: %w", w.cart.Files, w.cart.Barcode, err)
	}
	err := w.d.WriteFilemarks(ctx, 1)
	if errors.Is(err, drive.ErrEarlyWarning) {
		full, err = true, nil
	}
	if errors.Is(err, drive.ErrEndOfMedium) {
		return fmt.Errorf("%w: %w", errLostFile, err)
	}
	if err != nil {
		return fmt.Errorf("write the filemark of tape file %d of %s: %w", w.cart.Files, w.cart.Barcode, err)
	}
	full = full || w.bw.EarlyWarning()
	// The file streamed from its first block handed to the drive to its
	// filemark; before the first block the job was reading the version's
	// listing, its catalog records and its first chunks (prep).
	end, first := w.s.clk.Now(), w.bw.FirstQueued()
	written, sums := w.bw.Written(), w.bw.Sums()
	var verified time.Duration
	if !w.pool.NoVerify {
		w.endStream()
		if err := w.verifyFile(ctx, sums); err != nil {
			w.s.m.verifyFailures.Inc()
			return fmt.Errorf("verify tape file %d of %s: %w; the file is not recorded, and the next job writes its versions again", w.cart.Files, w.cart.Barcode, err)
		}
		verified = w.s.clk.Now().Sub(end)
	}
	if first.IsZero() {
		first = w.opened
	}
	secs, prep := end.Sub(first).Seconds(), first.Sub(w.opened)
	w.s.setStatus(func(st *Status) {
		st.StreamBytes += written
		st.StreamSeconds += secs
		if st.StreamSeconds > 0 {
			st.StreamRate = float64(st.StreamBytes) / st.StreamSeconds
		}
	})
	ref := w.ref()
	cmd := catalog.TapeFileCmd{
		File: catalog.TapeFile{Barcode: w.cart.Barcode, File: w.cart.Files, MediaSet: w.set.ID, Written: w.s.clk.Now().UTC(), Bytes: written,
			Block: w.mark.Block, BlockKnown: w.mark.BlockKnown},
		Pool: w.pool.Name, SetCreated: w.set.Created, Chunks: w.fileChunks, Copies: w.fileCopies, Full: full,
	}
	if err := w.s.cat.Tape(catalog.KindTapeFile, cmd); err != nil {
		return fmt.Errorf("record tape file %d of %s: %w", w.cart.Files, w.cart.Barcode, err)
	}
	for _, c := range w.fileChunks {
		w.committed[chunkKey{c.Company, c.ID}] = ref
	}
	w.res.Files++
	w.res.Versions += len(w.fileCopies)
	w.cart.Files++
	if !slices.Contains(w.set.Cartridges, w.cart.Barcode) {
		w.set.Cartridges = append(w.set.Cartridges, w.cart.Barcode)
	}
	if full {
		w.cart.State = catalog.CartFull
	}
	w.s.log.Info("tape file written", zap.String("barcode", ref.Barcode), zap.Int("file", ref.File),
		zap.Int("chunks", len(w.fileChunks)), zap.Int("versions", len(w.fileCopies)), zap.Bool("full", full),
		zap.Int64("bytes", written), zap.Duration("prep", prep), zap.Float64("stream_seconds", secs),
		zap.Bool("verified", !w.pool.NoVerify), zap.Duration("verify", verified))
	w.fileChunks, w.fileCopies = nil, nil
	return nil
}

// verifyFile reads the data file just closed back from its start and
// compares each block with what was written (sums, in order), then reads
// its filemark: the tape is then where it was after the filemark was
// written, at the end of data. A block that differs says which written
// block it holds, if any, so a block out of place shows as such.
func (w *writer) verifyFile(ctx context.Context, sums []uint64) error {
	if err := w.d.SeekFile(ctx, w.mark); err != nil {
		return fmt.Errorf("go back to its start: %w", err)
	}
	var buf []byte
	if len(w.spare) > 0 && cap(w.spare[0]) >= format.RecordSize {
		buf = w.spare[0][:format.RecordSize]
	} else {
		buf = make([]byte, format.RecordSize)
	}
	for i := 0; ; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := w.d.ReadBlock(ctx, buf)
		switch {
		case errors.Is(err, drive.ErrFilemark) && i == len(sums):
			return nil
		case errors.Is(err, drive.ErrFilemark):
			return fmt.Errorf("%w: it ends after %d blocks, %d were written", errVerify, i, len(sums))
		case err != nil:
			return fmt.Errorf("read block %d of %d back: %w", i+1, len(sums), err)
		case i >= len(sums):
			return fmt.Errorf("%w: a block past the %d written", errVerify, len(sums))
		case n != format.RecordSize:
			return fmt.Errorf("%w: block %d is %d bytes, %d were written", errVerify, i+1, n, format.RecordSize)
		}
		if got := xxhash.Sum64(buf); got != sums[i] {
			if j := slices.Index(sums, got); j >= 0 {
				return fmt.Errorf("%w: block %d holds what was written as block %d (blocks out of order on the way to the tape)", errVerify, i+1, j+1)
			}
			return fmt.Errorf("%w: block %d differs from what was written", errVerify, i+1)
		}
	}
}

// errVerify: a data file read back does not match what was written.
var errVerify = errors.New("the file read back from the tape differs from what was written")

// catalogFile writes the cartridge's catalog file after its last data
// file, before the job leaves it. A failure costs only speed (a scan then
// reads every file): it is reported in the result and the log, and the
// job goes on; a drive error shows again at the next write.
func (w *writer) catalogFile(ctx context.Context) {
	if w.d == nil || w.cart.Files < 2 {
		return
	}
	w.endStream()
	if err := w.s.writeCatalogFile(ctx, w.d, w.cart.Barcode); err != nil {
		w.s.log.Warn("no catalog file at the end of the cartridge: a scan of it reads every file", zap.String("barcode", w.cart.Barcode), zap.Error(err))
		w.res.CatalogMissing = append(w.res.CatalogMissing, w.cart.Barcode+": "+err.Error())
		return
	}
	w.res.CatalogFiles = append(w.res.CatalogFiles, w.cart.Barcode)
}

// chooseSet picks the media set the pool's job writes to, by its
// allocation policy, and loads its cartridge.
func (w *writer) chooseSet(ctx context.Context) error {
	sets, err := w.s.cat.MediaSets()
	if err != nil {
		return err
	}
	var cur *catalog.MediaSet
	for i := range sets {
		if sets[i].Pool == w.pool.Name && !sets[i].Closed && (cur == nil || sets[i].Created.After(cur.Created)) {
			cur = &sets[i]
		}
	}
	now := w.s.clk.Now()
	if cur != nil {
		y, m, d := now.In(w.s.opt.Zone).Date()
		midnight := time.Date(y, m, d, 0, 0, 0, 0, w.s.opt.Zone)
		if w.pool.Allocation == catalog.AllocAlwaysNew || (w.pool.Allocation == catalog.AllocByDay && cur.Created.Before(midnight)) {
			if err := w.s.cat.Tape(catalog.KindTapeCloseSet, catalog.TapeCloseSetCmd{MediaSet: cur.ID}); err != nil {
				return err
			}
			cur = nil
		}
	}
	if cur == nil {
		var b [8]byte
		rand.Read(b[:])
		cur = &catalog.MediaSet{ID: now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:]), Pool: w.pool.Name, Created: now.UTC()}
	}
	w.set = *cur
	w.res.MediaSets = append(w.res.MediaSets, w.set.ID)
	// Continue on the set's last cartridge if it has room and is here.
	if n := len(w.set.Cartridges); n > 0 {
		cr, err := w.s.cat.Cartridge(w.set.Cartridges[n-1])
		if err == nil && cr.State == catalog.CartWritable && cr.Where != catalog.WhereOffsite && w.s.reserve(cr.Barcode, w.drive) {
			return w.use(ctx, cr)
		}
	}
	return w.nextCartridge(ctx)
}

// nextCartridge unloads the current cartridge and loads the next for the
// media set: an empty one labelled for the pool, else one of the pool's
// whose media set closed and whose retention passed (relabelled), else a
// blank one (labelled).
func (w *writer) nextCartridge(ctx context.Context) error {
	if w.d != nil {
		if _, err := w.s.unload(ctx, w.addr); err != nil {
			return err
		}
		w.d = nil
	}
	carts, err := w.s.cat.Cartridges()
	if err != nil {
		return err
	}
	sets, err := w.s.cat.MediaSets()
	if err != nil {
		return err
	}
	closed := map[string]bool{}
	for _, ms := range sets {
		closed[ms.ID] = ms.Closed
	}
	keep, expires, err := w.pool.RetentionSpan()
	if err != nil {
		return err
	}
	now := w.s.clk.Now()
	here := func(c catalog.Cartridge) bool {
		return c.Where != catalog.WhereOffsite && !slices.Contains(w.used, c.Barcode)
	}
	// The first that fits and no other drive's writer holds, now held by
	// this one.
	pick := func(ok func(c catalog.Cartridge) bool) *catalog.Cartridge {
		for i := range carts {
			if here(carts[i]) && ok(carts[i]) && w.s.reserve(carts[i].Barcode, w.drive) {
				return &carts[i]
			}
		}
		return nil
	}
	if c := pick(func(c catalog.Cartridge) bool {
		return c.State == catalog.CartWritable && c.Pool == w.pool.Name && c.MediaSet == ""
	}); c != nil {
		return w.use(ctx, *c)
	}
	if expires {
		if c := pick(func(c catalog.Cartridge) bool {
			return c.Pool == w.pool.Name && (c.State == catalog.CartWritable || c.State == catalog.CartFull) &&
				c.MediaSet != "" && c.MediaSet != w.set.ID && closed[c.MediaSet] && now.Sub(c.LastWritten) > keep
		}); c != nil {
			return w.relabel(ctx, *c)
		}
	}
	if c := pick(func(c catalog.Cartridge) bool { return c.State == catalog.CartBlank }); c != nil {
		return w.relabel(ctx, *c)
	}
	return fmt.Errorf("%w for pool %q: put a blank cartridge into the library (vaultctl tape import), or let the pool overwrite older cartridges (vaultctl tape pool set %s --retention 30d)",
		ErrNoCartridge, w.pool.Name, w.pool.Name)
}

func (w *writer) relabel(ctx context.Context, c catalog.Cartridge) error {
	d, err := w.loadCart(ctx, c.Barcode)
	if err != nil {
		return err
	}
	if err := w.s.writeLabel(ctx, d, c.Barcode, w.pool.Name); err != nil {
		return err
	}
	cr, err := w.s.cat.Cartridge(c.Barcode)
	if err != nil {
		return err
	}
	w.cart = cr
	w.used = append(w.used, cr.Barcode)
	w.res.Cartridges = append(w.res.Cartridges, cr.Barcode)
	w.s.setStatus(func(st *Status) { st.Cartridges = append(st.Cartridges, cr.Barcode) })
	return nil // the tape is after file 0: where file 1 goes
}

func (w *writer) loadCart(ctx context.Context, barcode string) (Drive, error) {
	d, inv, err := w.s.load(ctx, barcode, w.drive)
	if err != nil {
		return nil, err
	}
	e, _ := inv.Find(barcode)
	w.d, w.addr = d, e.Address
	return d, nil
}

// use loads a labelled cartridge, checks its label and positions it
// after its last complete file: whatever an interrupted job left past it
// is overwritten.
func (w *writer) use(ctx context.Context, c catalog.Cartridge) error {
	d, err := w.loadCart(ctx, c.Barcode)
	if err != nil {
		return err
	}
	if err := checkLabel(ctx, d, c); err != nil {
		return err
	}
	if c.Files > 1 {
		if err := d.SpaceFiles(ctx, int32(c.Files-1)); err != nil {
			return fmt.Errorf("position %s after its file %d: %w", c.Barcode, c.Files-1, err)
		}
	}
	w.cart = c
	w.used = append(w.used, c.Barcode)
	w.res.Cartridges = append(w.res.Cartridges, c.Barcode)
	w.s.setStatus(func(st *Status) { st.Cartridges = append(st.Cartridges, c.Barcode) })
	return nil
}
