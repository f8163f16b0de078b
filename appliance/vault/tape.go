package vault

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/store"
	"vaultnode/appliance/tape"
	"vaultnode/appliance/tape/changer"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// The vault's side of the tape subsystem (docs/tape.md): the Source the
// daily tape job reads versions and chunks from, the Sink a restore from
// tape writes into, and the operator's operations.

// DefaultTapeSchedule is when the daily tape job runs unless set.
const DefaultTapeSchedule = "daily 06:00-10:00"

type tapeSource struct{ v *Vault }

func (s tapeSource) Versions(ctx context.Context) ([]tape.Version, error) {
	var out []tape.Version
	err := s.v.Catalog.AllVersionRecords(func(ver catalog.Version) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		m := ver.Manifest
		pool, err := s.v.Catalog.TapePoolOf(m.Company, m.Computer, m.Config)
		if err != nil || pool == "" {
			return err
		}
		if ver.ManifestID == (catalog.ID{}) {
			s.v.log.Warn("version recorded without its manifest id cannot go to tape")
			return nil
		}
		if on, err := s.v.Catalog.OnTape(m.Computer, m.Config, m.Seq); err != nil || on {
			return err
		}
		out = append(out, tape.Version{Company: m.Company, Computer: m.Computer, Config: m.Config, Seq: m.Seq,
			Started: m.Started, Finished: m.Finished, ManifestID: ver.ManifestID, Pool: pool, Listing: m.Listing})
		return nil
	})
	return out, err
}

func (s tapeSource) Chunks(ctx context.Context, tv tape.Version, fn func(ids [][32]byte) error) error {
	var ferr error
	err := s.v.markListing(ctx, tv.Company, tv.Listing, func(ids [][32]byte) {
		if ferr == nil {
			ferr = fn(ids)
		}
	})
	return errors.Join(err, ferr)
}

// Entry returns a chunk's pack entry as stored, header and sealed body,
// without opening it: the tape job streams at the disk's pace instead of
// decrypting, hashing and sealing every chunk again (on the appliance's
// processors that was most of the job's time). The body's tag still
// authenticates it wherever it is read back (restore, vault-tape-recover,
// which also check each chunk against its id); verify checks the stored
// entries themselves. It reads into dst when it fits.
func (s tapeSource) Entry(ctx context.Context, company string, id [32]byte, dst []byte) ([]byte, error) {
	e, _, err := s.v.Store.GetSealedInto(company, id, dst)
	return e, err
}

func (s tapeSource) Open(company string, entry []byte) ([]byte, error) {
	k, err := s.v.companyKeys(company)
	if err != nil {
		return nil, err
	}
	h, err := pack.ParseEntryHeader(entry)
	if err != nil {
		return nil, err
	}
	return pack.OpenBody(nil, k.aead, &h, entry[pack.EntryHeaderSize:])
}

type tapeSink struct{ v *Vault }

func (s tapeSink) Has(company string, ids [][32]byte) ([]bool, error) {
	return s.v.Store.Has(company, ids)
}

// Put checks every entry read from tape against its id before storing it.
func (s tapeSink) Put(ctx context.Context, company string, entries [][]byte, plain []bool) error {
	k, err := s.v.companyKeys(company)
	if err != nil {
		return err
	}
	hs := keys.NewHasher(k.set.ChunkID)
	var out []store.Entry
	for i, e := range entries {
		h, err := pack.ParseEntryHeader(e)
		if err != nil {
			return fmt.Errorf("chunk from tape: %w", err)
		}
		payload := e[pack.EntryHeaderSize:]
		if !plain[i] {
			if uint32(len(payload)) != h.BodyLen {
				return fmt.Errorf("chunk %x from tape: body of %d bytes, header says %d", h.ID[:8], len(payload), h.BodyLen)
			}
			if payload, err = pack.OpenBody(nil, k.aead, &h, payload); err != nil {
				return fmt.Errorf("chunk %x from tape: %w (is it this company's?)", h.ID[:8], err)
			}
		}
		p, err := wire.Decompress(nil, h.Flags, payload, h.PlainLen)
		if err != nil {
			return fmt.Errorf("chunk %x from tape: %w", h.ID[:8], err)
		}
		if hs.Sum(p) != h.ID {
			return fmt.Errorf("chunk %x from tape: %w: content does not hash to its id", h.ID[:8], store.ErrDamaged)
		}
		nh := pack.EntryHeader{Kind: h.Kind, Flags: h.Flags, ID: h.ID, PlainLen: h.PlainLen}
		out = append(out, store.Entry{Header: nh, Data: pack.AppendEntry(nil, k.aead, &nh, payload)})
	}
	return s.v.Store.Put(company, out)
}

// AddVersion reads the manifest back from the store, checks that every
// chunk it names is there and records the version.
func (s tapeSink) AddVersion(ctx context.Context, company string, manifestID [32]byte) error {
	v := s.v
	k, err := v.companyKeys(company)
	if err != nil {
		return err
	}
	payload, loc, err := v.Store.Get(company, k.aead, manifestID, nil)
	if err != nil {
		return fmt.Errorf("read the manifest: %w", err)
	}
	mb, err := wire.Decompress(nil, loc.Flags, payload, loc.PlainLen)
	if err != nil {
		return err
	}
	var m wire.Manifest
	if err := tree.Unmarshal(mb, &m); err != nil || m.Magic != wire.ManifestMagic || m.Company != company {
		return fmt.Errorf("manifest %x from tape is not a manifest of %s (%v)", manifestID[:8], company, err)
	}
	var missing int
	err = v.markListing(ctx, company, m.Listing, func(ids [][32]byte) {
		have, herr := v.Store.Has(company, ids)
		for i := range ids {
			if herr != nil || !have[i] {
				missing++
			}
		}
	})
	if err != nil {
		return fmt.Errorf("walk the listing of %s@%d: %w", m.Config, m.Seq, err)
	}
	if missing > 0 {
		return fmt.Errorf("%d chunks of %s@%d are neither in the vault nor in the tape files read: run `vaultctl tape scan` on the version's cartridges", missing, m.Config, m.Seq)
	}
	err = v.Catalog.AddVersion(m, manifestID)
	if errors.Is(err, catalog.ErrExists) {
		return nil // it is on disk already
	}
	return err
}

// tapeRestores hands restore requests to the tape-restore job.
type tapeRestores struct {
	mu    sync.Mutex
	req   *tape.RestoreRequest
	agent *wire.RestoreArgs // then restore it onto its computer
}

// TapeRestoreResult is a tape-restore job's result: what came back from
// tape, and the restore command sent to the computer when asked.
type TapeRestoreResult struct {
	tape.RestoreResult
	AgentCommand string `json:"agent_command,omitempty"`
}

func (v *Vault) openTape() {
	lib := tape.Library{}
	if v.opts.Tape != nil {
		lib = *v.opts.Tape
	}
	v.Tape = tape.New(lib, v.Catalog, tapeSource{v}, tapeSink{v}, tape.Options{Log: v.log.Named("tape"), Clock: v.clk, Zone: v.opts.Zone,
		Recovery: v.opts.TapeRecovery, FileLimit: v.opts.TapeFileLimit, Metrics: v.Metrics})
	if v.opts.Tape == nil {
		return
	}
	// Physical truth on start: the catalog learns where every cartridge is
	// before anything uses the library (a job interrupted by a stop may
	// have left one in a drive).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := v.Tape.Sync(ctx); err != nil {
		v.log.Warn("read the tape library at start: the next tape operation reads it again", zap.Error(err))
	}
	v.Jobs.Register(tape.KindTape, v.Tape.Run)
	v.Jobs.Register(tape.KindTapeRestore, func(ctx context.Context, p *jobs.Progress) (any, error) {
		v.tapeReq.mu.Lock()
		req, agent := v.tapeReq.req, v.tapeReq.agent
		v.tapeReq.req, v.tapeReq.agent = nil, nil
		v.tapeReq.mu.Unlock()
		if req == nil {
			return nil, fmt.Errorf("no version to restore: start it with `vaultctl tape restore COMPUTER CONFIG SEQ`")
		}
		// The chunks a restore stores are referenced by nothing until the
		// version is recorded at its end: no collection may run meanwhile
		// (one running now is waited for; one starting later is refused).
		for !v.collecting.TryLock() {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-v.clk.After(time.Second):
			}
		}
		res, err := v.Tape.Restore(ctx, p, *req)
		v.collecting.Unlock()
		if err != nil || agent == nil {
			return res, err
		}
		// Straight to the agent: the version is in the vault again; its
		// computer restores it through its command channel.
		out := &TapeRestoreResult{RestoreResult: *res}
		cmd, err := v.Enqueue(ctx, operator, req.Computer, wire.AgentCommand{Kind: wire.CmdRestore, Restore: agent})
		if err != nil {
			return out, fmt.Errorf("the version is back in the vault, but its restore could not be sent to %s: %w", req.Computer, err)
		}
		out.AgentCommand = cmd.ID
		return out, nil
	})
}

func tapeErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, tape.ErrNoLibrary):
		return fail(http.StatusNotFound, wire.CodeNotFound, "%v", err)
	case errors.Is(err, tape.ErrBusy):
		return fail(http.StatusConflict, wire.CodeBusy, "%v", err)
	case errors.Is(err, tape.ErrNotOnTape), errors.Is(err, changer.ErrNotFound):
		return fail(http.StatusNotFound, wire.CodeNotFound, "%v", err)
	case errors.Is(err, tape.ErrOffsite), errors.Is(err, changer.ErrNoSuchElement), errors.Is(err, changer.ErrDestFull),
		errors.Is(err, changer.ErrSourceEmpty), errors.Is(err, changer.ErrNoFreeSlot):
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	return catalogErr(err)
}

// TapeOverview is `vaultctl tape status`.
type TapeOverview struct {
	Library    bool                `json:"library"` // a library was found
	Status     tape.Status         `json:"status"`
	Pools      []catalog.TapePool  `json:"pools"`
	Coverage   []catalog.TapeCover `json:"coverage"`
	Cartridges []catalog.Cartridge `json:"cartridges"`
	MediaSets  []catalog.MediaSet  `json:"media_sets"`
	LastJob    *jobs.Record        `json:"last_job,omitempty"`
}

// TapeStatus returns the library's state as the catalog has it.
func (v *Vault) TapeStatus(ctx context.Context, p *Principal) (TapeOverview, error) {
	if !p.Has(CapOperate) || p.Kind != Operator {
		return TapeOverview{}, forbid(p, CapOperate)
	}
	o := TapeOverview{Library: v.opts.Tape != nil, Status: v.Tape.Status()}
	var err error
	if o.Pools, err = v.Catalog.TapePools(); err != nil {
		return o, err
	}
	if o.Coverage, err = v.Catalog.TapeCovers(); err != nil {
		return o, err
	}
	if o.Cartridges, err = v.Catalog.Cartridges(); err != nil {
		return o, err
	}
	if o.MediaSets, err = v.Catalog.MediaSets(); err != nil {
		return o, err
	}
	if last, ok, err := v.Jobs.Last(tape.KindTape); err == nil && ok {
		o.LastJob = &last
	}
	return o, nil
}

// TapeRequest is every tape operation's request; each uses some fields.
type TapeRequest struct {
	Op       string               `json:"op"` // inventory load unload move export import label state scan clean restore pool cover
	Barcode  string               `json:"barcode,omitempty"`
	Drive    uint16               `json:"drive,omitempty"`
	From     uint16               `json:"from,omitempty"`
	To       uint16               `json:"to,omitempty"`
	IE       uint16               `json:"ie,omitempty"`
	Pool     string               `json:"pool,omitempty"`
	Force    bool                 `json:"force,omitempty"`
	State    catalog.CartState    `json:"state,omitempty"`
	PoolSpec *catalog.TapePool    `json:"pool_spec,omitempty"`
	Cover    *catalog.TapeCover   `json:"cover,omitempty"`
	Remove   bool                 `json:"remove,omitempty"`
	Restore  *tape.RestoreRequest `json:"restore,omitempty"`
	// ToAgent: after a restore from tape, send the computer a restore
	// command of the version (into Into, "" its original place; Existing:
	// skip, overwrite or keep-both).
	ToAgent  bool   `json:"to_agent,omitempty"`
	Into     string `json:"into,omitempty"`
	Existing string `json:"existing,omitempty"`
}

// TapeOp runs one operator tape operation and returns its answer.
func (v *Vault) TapeOp(ctx context.Context, p *Principal, req TapeRequest) (any, error) {
	if !p.Has(CapOperate) || p.Kind != Operator {
		return nil, forbid(p, CapOperate)
	}
	t := v.Tape
	switch req.Op {
	case "inventory":
		out, err := t.Inventory(ctx)
		return out, tapeErr(err)
	case "load":
		out, err := t.Load(ctx, req.Barcode, req.Drive)
		return out, tapeErr(err)
	case "unload":
		out, err := t.Unload(ctx, req.Drive)
		return out, tapeErr(err)
	case "move":
		out, err := t.Move(ctx, req.From, req.To)
		return out, tapeErr(err)
	case "export":
		out, err := t.Export(ctx, req.Barcode)
		return out, tapeErr(err)
	case "import":
		out, err := t.Import(ctx, req.IE)
		return out, tapeErr(err)
	case "label":
		return nil, tapeErr(t.Label(ctx, req.Barcode, req.Pool, req.Force))
	case "state":
		return nil, tapeErr(t.SetState(ctx, req.Barcode, req.State))
	case "scan":
		out, err := t.Scan(ctx, req.Barcode)
		return out, tapeErr(err)
	case "pool":
		if req.PoolSpec == nil {
			return v.Catalog.TapePools()
		}
		ps := *req.PoolSpec
		ps.Set = v.clk.Now()
		return nil, catalogErr(v.Catalog.Tape(catalog.KindPutTapePool, catalog.PutTapePoolCmd{Pool: ps}))
	case "cover":
		if req.Cover == nil {
			return v.Catalog.TapeCovers()
		}
		cv := *req.Cover
		cv.Set = v.clk.Now()
		return nil, catalogErr(v.Catalog.Tape(catalog.KindSetTapeCover, catalog.SetTapeCoverCmd{Cover: cv, Remove: req.Remove}))
	case "clean":
		out, err := t.Clean(ctx, req.Drive)
		if errors.Is(err, tape.ErrNoCleaningCartridge) {
			return out, fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
		}
		return out, tapeErr(err)
	case "needs":
		if req.Restore == nil {
			return nil, fail(http.StatusBadRequest, wire.CodeBadRequest, "name the version: computer, config, seq")
		}
		out, err := t.Needs(*req.Restore)
		return out, tapeErr(err)
	case "restore":
		if req.Restore == nil {
			return nil, fail(http.StatusBadRequest, wire.CodeBadRequest, "name the version: computer, config, seq")
		}
		if _, err := t.Needs(*req.Restore); err != nil {
			return nil, tapeErr(err)
		}
		v.tapeReq.mu.Lock()
		defer v.tapeReq.mu.Unlock()
		v.tapeReq.req, v.tapeReq.agent = req.Restore, nil
		if req.ToAgent {
			v.tapeReq.agent = &wire.RestoreArgs{Config: req.Restore.Config, Version: req.Restore.Seq, To: req.Into, Existing: req.Existing}
		}
		out, err := v.StartJob(ctx, p, tape.KindTapeRestore)
		if err != nil || out.Running {
			// Not started: the request must not wait for a later job.
			v.tapeReq.req, v.tapeReq.agent = nil, nil
		}
		if err == nil && out.Running {
			return nil, fail(http.StatusConflict, wire.CodeBusy, "a restore from tape is running (job %s): wait for it (vaultctl job show %s)", out.Job.ID, out.Job.ID)
		}
		return out, err
	}
	return nil, fail(http.StatusBadRequest, wire.CodeBadRequest, "unknown tape operation %q", req.Op)
}

// CompanyKey is a company's exported key: the secret every key of the
// company derives from, for reading its tapes without the vault.
type CompanyKey struct {
	Company string `json:"company"`
	Key     string `json:"key"` // KeyText: one line
}

// KeyPrefix starts an exported key's line.
const KeyPrefix = "vaultnode-company-key-v1"

// ExportKey returns a company's secret as one line of text: "vaultnode-
// company-key-v1 COMPANY HEX".
func (v *Vault) ExportKey(ctx context.Context, p *Principal, company string) (CompanyKey, error) {
	if !p.Has(CapOperate) || p.Kind != Operator {
		return CompanyKey{}, forbid(p, CapOperate)
	}
	secret, err := v.companySecret(company)
	if err != nil {
		return CompanyKey{}, catalogErr(err)
	}
	return CompanyKey{Company: company, Key: KeyPrefix + " " + company + " " + hex.EncodeToString(secret[:])}, nil
}

// ParseKey reads an exported key's line.
func ParseKey(r io.Reader) (company string, secret [32]byte, err error) {
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil {
		return "", secret, err
	}
	f := strings.Fields(string(b))
	if len(f) < 3 || f[0] != KeyPrefix || len(f[2]) != 64 {
		return "", secret, fmt.Errorf("not a company key: want a line %q", KeyPrefix+" COMPANY HEX")
	}
	if _, err := hex.Decode(secret[:], []byte(f[2])); err != nil {
		return "", secret, fmt.Errorf("company key: %w", err)
	}
	return f[1], secret, nil
}

func (v *Vault) tapeRoutes(rt *router) {
	rt.handle("GET "+AdminTape, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.TapeStatus(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminTape, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req TapeRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.TapeOp(r.Context(), p, req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminCompanies+"/{name}/key", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.ExportKey(r.Context(), p, r.PathValue("name"))
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
}

// tapeEvents tells operators of a change in the tape library's TapeAlert
// flags (read after each job) and of what a job did about a drive asking
// for cleaning: cleaned, no usable cleaning cartridge, an expired one.
func (v *Vault) tapeEvents(st *notifyState, first bool) []event {
	if v.Tape == nil {
		return nil
	}
	ts := v.Tape.Status()
	lines := append(slices.Clone(ts.Cleaning), ts.Alerts...)
	sig := strings.Join(lines, "\n")
	was := st.Tape
	st.Tape = sig
	if first || sig == was || sig == "" {
		return nil
	}
	subject := fmt.Sprintf("Tape library: %d TapeAlert flags", len(ts.Alerts))
	if len(ts.Cleaning) > 0 {
		subject = "Tape library: " + ts.Cleaning[0]
	}
	body := "After the last tape job:\n\n"
	for _, l := range lines {
		body += "  " + l + "\n"
	}
	body += "\nSee `vaultctl tape status` on the vault; `vaultctl tape clean DRIVE` cleans a drive with a cleaning cartridge (barcode CLN…) in the library.\n"
	return []event{{kind: EventTape, subject: subject, body: body}}
}
