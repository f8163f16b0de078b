package vault

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

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
	Packs    int       `json:"packs"`
	Entries  int64     `json:"entries"`
	Bytes    int64     `json:"bytes"`
	Versions int       `json:"versions"`
	Files    int64     `json:"files"`
	Problems []Problem `json:"problems"`
}

// OK reports whether nothing is damaged.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

const maxProblems = 10000

func (r *Report) add(p Problem) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, p)
	}
}

// Verify reads every pack entry, checks its seal, compression and chunk ID,
// checks that the index points only at good entries, and that every
// version's listing and every chunk it references are present and good.
func (v *Vault) Verify(ctx context.Context) (*Report, error) {
	rep := &Report{Problems: []Problem{}}
	packs, err := v.Store.Packs()
	if err != nil {
		return nil, err
	}
	good := map[uint32][]uint32{} // pack -> offsets of good entries, sorted
	scanned := map[uint32]int64{} // pack -> committed length it was checked up to
	stopped := map[uint32]int64{} // pack -> offset of a bad entry that stopped its scan
	damaged := map[[32]byte]bool{}
	for _, p := range packs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rep.Packs++
		scanned[p.Number] = p.Committed
		k, err := v.companyKeys(p.Company)
		if err != nil {
			rep.add(Problem{Pack: p.Path, What: fmt.Sprintf("company %q: %v", p.Company, err)})
			continue
		}
		var stop int64
		good[p.Number], stop = v.verifyPack(p, k, rep, damaged)
		if stop < p.Committed {
			stopped[p.Number] = stop
		}
	}
	companies, err := v.Catalog.Companies()
	if err != nil {
		return nil, err
	}
	// Entries committed after their pack was scanned (backups run during a
	// verify) are checked against the packs' committed lengths afterwards.
	type lateEntry struct {
		id  [32]byte
		loc store.Location
	}
	var late []lateEntry
	for _, co := range companies {
		err := v.Store.ForEachChunk(co.Name, func(id [32]byte, loc store.Location) error {
			if c, ok := scanned[loc.Pack]; !ok || int64(loc.Offset) >= c {
				late = append(late, lateEntry{id, loc})
				return nil
			}
			offs := good[loc.Pack]
			i := sort.Search(len(offs), func(i int) bool { return offs[i] >= loc.Offset })
			if i == len(offs) || offs[i] != loc.Offset {
				if stop, ok := stopped[loc.Pack]; ok && int64(loc.Offset) > stop && v.checkEntry(co.Name, id) == nil {
					return nil // past a bad header, but good where the index says
				}
				damaged[id] = true
				rep.add(Problem{Pack: v.Store.PackPath(loc.Pack), Offset: int64(loc.Offset), Chunk: hex.EncodeToString(id[:]),
					What: "the index points at an entry that is missing or damaged"})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
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
			if int64(l.loc.Offset)+pack.EntryHeaderSize+int64(l.loc.BodyLen) > committed[l.loc.Pack] {
				damaged[l.id] = true
				rep.add(Problem{Pack: v.Store.PackPath(l.loc.Pack), Offset: int64(l.loc.Offset), Chunk: hex.EncodeToString(l.id[:]),
					What: "the index points past the committed end of its pack"})
			}
		}
	}
	err = v.Catalog.AllVersions(func(m wire.Manifest) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		rep.Versions++
		v.verifyVersion(m, rep, damaged)
		return nil
	})
	return rep, err
}

// verifyPack scans a pack and returns the offsets of its good entries and
// where the scan ended (p.Committed unless a bad entry stopped it).
func (v *Vault) verifyPack(p store.PackInfo, k *companyKeys, rep *Report, damaged map[[32]byte]bool) ([]uint32, int64) {
	var offs []uint32
	f, err := os.Open(p.Path)
	if err != nil {
		rep.add(Problem{Pack: p.Path, What: fmt.Sprintf("cannot open pack: %v", err)})
		return nil, 0
	}
	defer f.Close()
	sc, err := pack.NewScanner(io.LimitReader(f, p.Committed))
	if err != nil {
		rep.add(Problem{Pack: p.Path, What: err.Error()})
		return nil, 0
	}
	if sc.Header.Company != p.Company || sc.Header.Number != p.Number {
		rep.add(Problem{Pack: p.Path, What: fmt.Sprintf("header names company %q pack %d, index says %q pack %d", sc.Header.Company, sc.Header.Number, p.Company, p.Number)})
	}
	h := keys.NewHasher(k.set.ChunkID)
	var payload, plain []byte
	for {
		e, err := sc.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			rep.add(Problem{Pack: p.Path, Offset: sc.Offset(), What: fmt.Sprintf("%v; the rest of the pack cannot be scanned", err)})
			break
		}
		rep.Entries++
		rep.Bytes += int64(len(e.Body))
		id := hex.EncodeToString(e.Header.ID[:])
		payload, err = pack.OpenBody(payload[:0], k.aead, &e.Header, e.Body)
		if err == nil {
			plain, err = wire.Decompress(plain[:0], e.Header.Flags, payload, e.Header.PlainLen)
		}
		if err == nil && h.Sum(plain) != e.Header.ID {
			err = errors.New("content does not hash to its id")
		}
		if err != nil {
			damaged[e.Header.ID] = true
			rep.add(Problem{Pack: p.Path, Offset: e.Offset, Chunk: id, What: err.Error()})
			continue
		}
		offs = append(offs, uint32(e.Offset))
	}
	if sc.Offset() < p.Committed {
		rep.add(Problem{Pack: p.Path, Offset: sc.Offset(), What: fmt.Sprintf("pack is shorter than its committed length %d", p.Committed)})
	}
	return offs, sc.Offset()
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

func (v *Vault) verifyVersion(m wire.Manifest, rep *Report, damaged map[[32]byte]bool) {
	ver := fmt.Sprintf("%s@%d", m.Config, m.Seq)
	k, err := v.companyKeys(m.Company)
	if err != nil {
		rep.add(Problem{Computer: m.Computer, Version: ver, What: err.Error()})
		return
	}
	lr := v.listingReader(m.Company, k, m.Listing)
	defer lr.Close() // stops the reader's goroutine when we return early
	rd, err := tree.NewReader(lr)
	if err != nil {
		rep.add(Problem{Computer: m.Computer, Version: ver, What: "listing unreadable: " + err.Error()})
		return
	}
	for {
		n, err := rd.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			rep.add(Problem{Computer: m.Computer, Version: ver, What: "listing unreadable past this point: " + err.Error()})
			return
		}
		if n.Type == tree.TypeFile {
			rep.Files++
		}
		var ids [][32]byte
		for _, c := range n.Chunks {
			ids = append(ids, c.ID)
		}
		has, err := v.Store.Has(m.Company, ids)
		if err != nil {
			rep.add(Problem{Computer: m.Computer, Version: ver, Path: string(n.Path), What: err.Error()})
			continue
		}
		for i, c := range n.Chunks {
			switch {
			case !has[i]:
				rep.add(Problem{Computer: m.Computer, Version: ver, Path: string(n.Path), Chunk: hex.EncodeToString(c.ID[:]), What: "referenced chunk is missing"})
			case damaged[c.ID]:
				rep.add(Problem{Computer: m.Computer, Version: ver, Path: string(n.Path), Chunk: hex.EncodeToString(c.ID[:]), What: "referenced chunk is damaged"})
			}
		}
	}
}
