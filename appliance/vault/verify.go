package vault

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Progress is told how far a long operation (verify) is.
type Progress interface {
	SetTotals(items, bytes int64)
	Add(items, bytes int64)
}

type noProgress struct{}

func (noProgress) SetTotals(items, bytes int64) {}
func (noProgress) Add(items, bytes int64)       {}

// Problem is one damaged thing found by Verify.
type Problem struct {
	Pack     string `json:"pack,omitempty"`   // pack file
	Offset   int64  `json:"offset,omitempty"` // entry offset in the pack
	Chunk    string `json:"chunk,omitempty"`  // chunk id, hex
	Computer string `json:"computer,omitempty"`
	Version  string `json:"version,omitempty"` // CONFIG@SEQ
	Path     string `json:"path,omitempty"`    // file in that version
	What     string `json:"what"`
}

func (p Problem) String() string {
	s := ""
	if p.Pack != "" {
		s += fmt.Sprintf("pack %s offset %d: ", p.Pack, p.Offset)
	}
	if p.Version != "" {
		s += fmt.Sprintf("version %s of %s: ", p.Version, p.Computer)
	}
	if p.Path != "" {
		s += fmt.Sprintf("file %q: ", p.Path)
	}
	if p.Chunk != "" {
		s += "chunk " + p.Chunk + ": "
	}
	return s + p.What
}

// Report is the result of Verify.
type Report struct {
	Packs    int   `json:"packs"`
	Entries  int64 `json:"entries"`
	Bytes    int64 `json:"bytes"`
	Records  int64 `json:"records"` // index records checked
	Versions int   `json:"versions"`
	Journal  int   `json:"journal"` // journal records
	Files    int64 `json:"files"`
	// Dead counts damaged entries and stretches no index record points at:
	// copies a heal superseded, or bytes never acknowledged. Not a
	// problem; garbage collection reclaims them.
	Dead     int64     `json:"dead"`
	Problems []Problem `json:"problems"`
	// Quarantined lists every chunk in quarantine after this run; New
	// marks those this run put there.
	Quarantined []QuarantinedChunk `json:"quarantined"`
	// Healed lists chunks a backup sent again since the last verify.
	Healed []HealedChunk `json:"healed"`
	// Repaired lists index records this run pointed at a good copy of
	// their chunk found elsewhere in the company's packs: fixed, so not
	// problems.
	Repaired []Problem `json:"repaired"`
}

// QuarantinedChunk is a chunk found damaged: agents are asked for it again.
type QuarantinedChunk struct {
	Company string    `json:"company"`
	Chunk   string    `json:"chunk"`
	Since   time.Time `json:"since"`
	Reason  string    `json:"reason"`
	New     bool      `json:"new,omitempty"`
}

// HealedChunk is a quarantined chunk a good copy replaced.
type HealedChunk struct {
	Company string    `json:"company"`
	Chunk   string    `json:"chunk"`
	At      time.Time `json:"at"`
}

// OK reports whether nothing is damaged.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

const maxProblems = 10000

func (r *Report) add(p Problem) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, p)
	}
}

// scannedEntry is what verify keeps of one entry: 48 bytes, so a million
// entries cost about 48 MB for the length of a verify.
type scannedEntry struct {
	id       [32]byte
	off      uint32
	bodyLen  uint32
	plainLen uint32
	kind     pack.Kind
	flags    uint8
	bad      bool // seal, compression or id check failed
	indexed  bool // an index record points at it
}

type scannedPack struct {
	company   string
	committed int64 // checked up to
	entries   []scannedEntry
}

// find returns the entry at off, or nil.
func (p *scannedPack) find(off uint32) *scannedEntry {
	i := sort.Search(len(p.entries), func(i int) bool { return p.entries[i].off >= off })
	if i < len(p.entries) && p.entries[i].off == off {
		return &p.entries[i]
	}
	return nil
}

// Verify checks everything the vault holds, trusting nothing: it reads
// every pack entry and checks its seal, compression and that the plaintext
// hashes to its id with the company's key; it checks every index record
// against the entry it points at (kind, id, lengths); and it walks every
// version's and every journal record's listing, checking that each chunk
// they reference is present and good. Chunks found damaged are quarantined
// (agents are asked for them again); the report also lists the chunks
// healed since the last run.
func (v *Vault) Verify(ctx context.Context) (*Report, error) { return v.VerifyProgress(ctx, nil) }

// VerifyProgress is Verify reporting the packs it scans (items, and bytes
// up to their committed ends) to prog, when not nil: a verify job's
// progress (ops_jobs.go).
func (v *Vault) VerifyProgress(ctx context.Context, prog Progress) (*Report, error) {
	if prog == nil {
		prog = noProgress{}
	}
	rep := &Report{Problems: []Problem{}, Quarantined: []QuarantinedChunk{}, Healed: []HealedChunk{}, Repaired: []Problem{}}
	healed, err := v.Store.TakeHealed()
	if err != nil {
		return nil, err
	}
	for _, h := range healed {
		rep.Healed = append(rep.Healed, HealedChunk{Company: h.Company, Chunk: hex.EncodeToString(h.ID[:]), At: h.At})
	}
	bad, err := v.Store.CheckIndex(maxProblems)
	if err != nil {
		return nil, err
	}
	for _, b := range bad {
		rep.add(Problem{What: "malformed index record: " + b.String()})
	}
	packs, err := v.Store.Packs()
	if err != nil {
		return nil, err
	}
	var total int64
	for _, p := range packs {
		total += p.Committed
	}
	prog.SetTotals(int64(len(packs)), total)
	scanned := map[uint32]*scannedPack{}
	damaged := map[[32]byte]bool{}
	for _, p := range packs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rep.Packs++
		k, err := v.companyKeys(p.Company)
		if err != nil {
			rep.add(Problem{Pack: p.Path, What: fmt.Sprintf("company %q: %v", p.Company, err)})
			prog.Add(1, p.Committed)
			continue
		}
		if sp := v.verifyPack(ctx, p, k, rep); sp != nil {
			scanned[p.Number] = sp
		}
		prog.Add(1, p.Committed)
	}
	companies, err := v.Catalog.Companies()
	if err != nil {
		return nil, err
	}
	var late, quarantine []suspect
	for _, co := range companies {
		err := v.Store.ForEachChunk(co.Name, func(id [32]byte, loc store.Location) error {
			rep.Records++
			sp := scanned[loc.Pack]
			if sp == nil || sp.company != co.Name {
				if sp != nil {
					quarantine = append(quarantine, suspect{co.Name, id, loc, fmt.Sprintf("the index points into pack %08x of company %q", loc.Pack, sp.company)})
					return nil
				}
				late = append(late, suspect{co.Name, id, loc, ""})
				return nil
			}
			if int64(loc.Offset) >= sp.committed {
				late = append(late, suspect{co.Name, id, loc, ""})
				return nil
			}
			e := sp.find(loc.Offset)
			why := ""
			switch {
			case e == nil:
				why = "the index points at no entry (damaged bytes, or not an entry's start)"
			case e.id != id:
				why = fmt.Sprintf("the index points at the entry of another chunk, %x", e.id[:8])
			case e.kind != loc.Kind || e.bodyLen != loc.BodyLen || e.plainLen != loc.PlainLen || e.flags != loc.Flags:
				why = fmt.Sprintf("the index record (kind %d, body %d, plain %d, flags %d) disagrees with the entry (kind %d, body %d, plain %d, flags %d)",
					loc.Kind, loc.BodyLen, loc.PlainLen, loc.Flags, e.kind, e.bodyLen, e.plainLen, e.flags)
			case e.bad:
				why = "the entry the index points at is damaged"
			}
			if e != nil {
				e.indexed = true
			}
			if why != "" {
				quarantine = append(quarantine, suspect{co.Name, id, loc, why})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	for _, sp := range scanned {
		for _, e := range sp.entries {
			if e.bad && !e.indexed {
				rep.Dead++
			}
		}
	}
	if quarantine, err = v.relocate(scanned, quarantine, rep); err != nil {
		return nil, err
	}
	scanned = nil // the biggest structure: let it go before the listings
	// Records committed after their pack was scanned (backups run during a
	// verify) are read and checked one by one.
	if len(late) > 0 {
		now, err := v.Store.Packs()
		if err != nil {
			return nil, err
		}
		committed := map[uint32]int64{}
		for _, p := range now {
			committed[p.Number] = p.Committed
		}
		for _, l := range late {
			if l.loc.End() > committed[l.loc.Pack] {
				l.why = "the index points past the committed end of its pack"
			} else if err := v.checkEntry(l.company, l.id); err != nil && !errors.Is(err, store.ErrQuarantined) {
				l.why = err.Error()
			} else if err != nil {
				l.why = "the entry the index points at is damaged"
			}
			if l.why != "" {
				quarantine = append(quarantine, l)
			}
		}
	}
	newly := map[string]bool{}
	for _, q := range quarantine {
		damaged[q.id] = true
		rep.add(Problem{Pack: v.Store.PackPath(q.loc.Pack), Offset: int64(q.loc.Offset), Chunk: hex.EncodeToString(q.id[:]),
			What: q.why + "; quarantined: the next backup that has it sends it again"})
		added, err := v.Store.Quarantine(q.company, q.id, q.why)
		if err != nil {
			return nil, err
		}
		if added {
			newly[q.company+"/"+hex.EncodeToString(q.id[:])] = true
		}
	}
	quarantined := map[string]map[[32]byte]store.Quarantine{}
	for _, co := range companies {
		qs, err := v.Store.Quarantined(co.Name)
		if err != nil {
			return nil, err
		}
		quarantined[co.Name] = qs
		for id, q := range qs {
			c := hex.EncodeToString(id[:])
			rep.Quarantined = append(rep.Quarantined, QuarantinedChunk{Company: co.Name, Chunk: c,
				Since: time.Unix(q.Since, 0).UTC(), Reason: q.Reason, New: newly[co.Name+"/"+c]})
		}
	}
	sort.Slice(rep.Quarantined, func(i, j int) bool {
		a, b := rep.Quarantined[i], rep.Quarantined[j]
		return a.Company < b.Company || a.Company == b.Company && a.Chunk < b.Chunk
	})
	// The versions are read in one catalog transaction, then walked
	// outside it (journalRecords, gc.go, says why).
	var ms []wire.Manifest
	err = v.Catalog.AllVersions(func(m wire.Manifest) error {
		ms = append(ms, m)
		return ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rep.Versions++
		if testHookWalk != nil {
			testHookWalk()
		}
		v.verifyListing(m.Company, m.Computer, fmt.Sprintf("%s@%d", m.Config, m.Seq), m.Listing, rep, damaged, quarantined[m.Company])
	}
	ms = nil
	recs, err := v.journalRecords(ctx) // walked outside the catalog's transaction (gc.go)
	if err != nil {
		return nil, err
	}
	owner := map[string]string{} // computer -> company
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rep.Journal++
		ver := fmt.Sprintf("%s@%d+%d", r.config, r.j.Base, r.j.N)
		co, ok := owner[r.computer]
		if !ok {
			cp, err := v.Catalog.Computer(r.computer)
			if err != nil {
				rep.add(Problem{Computer: r.computer, Version: ver, What: fmt.Sprintf("journal record of an unknown computer: %v", err)})
				continue
			}
			co, owner[r.computer] = cp.Company, cp.Company
		}
		if testHookWalk != nil {
			testHookWalk()
		}
		v.verifyListing(co, r.computer, ver, r.j.Listing, rep, damaged, quarantined[co])
	}
	return rep, nil
}

// suspect is an index record verify found wrong.
type suspect struct {
	company string
	id      [32]byte
	loc     store.Location
	why     string
}

// relocate points each suspect record whose chunk has a good entry
// elsewhere in its company's packs (swapped records, a record disagreeing
// with its entry, a damaged copy beside a good one) at that entry, and
// returns the suspects left to quarantine.
func (v *Vault) relocate(scanned map[uint32]*scannedPack, suspects []suspect, rep *Report) ([]suspect, error) {
	if len(suspects) == 0 {
		return suspects, nil
	}
	type key struct {
		company string
		id      [32]byte
	}
	good := map[key]store.Location{}
	for _, s := range suspects {
		good[key{s.company, s.id}] = store.Location{}
	}
	for n, sp := range scanned {
		for _, e := range sp.entries {
			k := key{sp.company, e.id}
			if l, ok := good[k]; ok && !e.bad && l.Offset == 0 {
				good[k] = store.Location{Pack: n, Offset: e.off, BodyLen: e.bodyLen, PlainLen: e.plainLen, Kind: e.kind, Flags: e.flags}
			}
		}
	}
	var left []suspect
	for _, s := range suspects {
		to := good[key{s.company, s.id}]
		if to.Offset == 0 { // offsets start past the pack header: none found
			left = append(left, s)
			continue
		}
		changed, err := v.Store.Relocate(s.company, s.id, s.loc, to)
		if err != nil {
			return nil, err
		}
		if !changed { // changed meanwhile (a backup healed it): check it next time
			continue
		}
		rep.Repaired = append(rep.Repaired, Problem{Pack: v.Store.PackPath(s.loc.Pack), Offset: int64(s.loc.Offset), Chunk: hex.EncodeToString(s.id[:]),
			What: fmt.Sprintf("%s; the index now points at its good copy in %s offset %d", s.why, v.Store.PackPath(to.Pack), to.Offset)})
	}
	return left, nil
}

// verifyPack scans a pack up to its committed length and checks every
// entry: seal, compression, and that the plaintext hashes to its id.
func (v *Vault) verifyPack(ctx context.Context, p store.PackInfo, k *companyKeys, rep *Report) *scannedPack {
	sp := &scannedPack{company: p.Company, committed: p.Committed}
	h := keys.NewHasher(k.set.ChunkID)
	var payload, plain []byte
	fh, size, err := v.Store.ScanPack(ctx, p, func(off int64, eh *pack.EntryHeader, body []byte) error {
		rep.Entries++
		rep.Bytes += int64(len(body))
		var err error
		payload, err = pack.OpenBody(payload[:0], k.aead, eh, body)
		if err == nil {
			plain, err = wire.Decompress(plain[:0], eh.Flags, payload, eh.PlainLen)
		}
		if err == nil && h.Sum(plain) != eh.ID {
			err = errors.New("content does not hash to its id")
		}
		sp.entries = append(sp.entries, scannedEntry{id: eh.ID, off: uint32(off), bodyLen: eh.BodyLen, plainLen: eh.PlainLen,
			kind: eh.Kind, flags: eh.Flags, bad: err != nil})
		return nil
	}, func(s store.Span) error {
		rep.Dead++ // an index record that points into it is reported below
		return nil
	})
	if err != nil {
		// Its index records are then read and checked one by one.
		rep.add(Problem{Pack: p.Path, What: fmt.Sprintf("cannot scan the pack: %v", err)})
		return nil
	}
	if fh.Company != p.Company || fh.Number != p.Number {
		rep.add(Problem{Pack: p.Path, What: fmt.Sprintf("header names company %q pack %d, index says %q pack %d", fh.Company, fh.Number, p.Company, p.Number)})
	}
	if size < p.Committed {
		rep.add(Problem{Pack: p.Path, Offset: size, What: fmt.Sprintf("pack is shorter than its committed length %d", p.Committed)})
	}
	return sp
}

// checkEntry reads one entry where the index says it is, as a restore
// would, and checks its seal, compression and id.
func (v *Vault) checkEntry(company string, id [32]byte) error {
	k, err := v.companyKeys(company)
	if err != nil {
		return err
	}
	payload, loc, err := v.Store.Get(company, k.aead, id, nil)
	if err != nil {
		return err
	}
	plain, err := wire.Decompress(nil, loc.Flags, payload, loc.PlainLen)
	if err != nil {
		return err
	}
	if keys.NewHasher(k.set.ChunkID).Sum(plain) != id {
		return errors.New("content does not hash to its id")
	}
	return nil
}

// verifyListing walks one version's or journal record's listing and
// checks every chunk it references.
func (v *Vault) verifyListing(company, computer, ver string, listing []tree.ChunkRef, rep *Report, damaged map[[32]byte]bool, quarantined map[[32]byte]store.Quarantine) {
	k, err := v.companyKeys(company)
	if err != nil {
		rep.add(Problem{Computer: computer, Version: ver, What: err.Error()})
		return
	}
	lr := v.listingReader(company, k, listing, nil)
	defer lr.Close() // stops the reader's goroutine when we return early
	rd, err := tree.NewListingReader(lr, listing)
	if err != nil {
		rep.add(Problem{Computer: computer, Version: ver, What: "listing unreadable: " + err.Error()})
		return
	}
	rd.Reuse() // a problem copies the node's path
	for {
		n, err := rd.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			rep.add(Problem{Computer: computer, Version: ver, What: "listing unreadable past this point: " + err.Error()})
			return
		}
		if n.Type == tree.TypeFile {
			rep.Files++
		}
		var ids [][32]byte
		for _, c := range n.Chunks {
			ids = append(ids, c.ID)
		}
		has, err := v.Store.Has(company, ids)
		if err != nil {
			rep.add(Problem{Computer: computer, Version: ver, Path: string(n.Path), What: err.Error()})
			continue
		}
		for i, c := range n.Chunks {
			p := Problem{Computer: computer, Version: ver, Path: string(n.Path), Chunk: hex.EncodeToString(c.ID[:])}
			switch _, q := quarantined[c.ID]; {
			case damaged[c.ID] || q:
				p.What = "referenced chunk is damaged (quarantined: the next backup that has it sends it again)"
			case !has[i]:
				p.What = "referenced chunk is missing"
			default:
				continue
			}
			rep.add(p)
		}
	}
}
