package vault

import (
	"go.uber.org/zap"

	"vaultnode/internal/tree"
)

// Listing chunks a commit already checked.
//
// A commit checks that every chunk its listing references is stored: one
// index lookup per reference. After an incremental or the first unchanged
// backup following one, most of the new listing's chunks (content-defined,
// chunker.NewListing) are chunks of the configuration's newest version,
// whose references the commit of that version checked. A node lying wholly
// inside such a chunk, decoded from the same place in it as then, is one of
// that version's nodes: its references need no lookup, provided that
// version's chunks cannot be swept before this commit's record (the session
// protects its whole company first, and the version must still be the
// newest afterwards, as in sameAsNewest). The decoder's place matters: the
// same bytes read from another starting point could frame other nodes, so
// the vault keeps, per listing chunk of the newest version, where the first
// node starting in it begins, and a chunk is trusted only when the new
// listing's first node in it begins at the same place. Every node is still
// decoded, counted and handed to the examination's facts; only lookups are
// skipped (docs/performance.md, item 33).

// knownListing is what the commit of a configuration's newest version
// learned of its listing's chunks.
type knownListing struct {
	seq uint64
	// starts maps a listing chunk's id to where (from the chunk's first
	// byte) the first node starting in it begins: noStart when none does,
	// ambiguous when the chunk recurs in the listing framed differently.
	starts map[[32]byte]int32
}

const (
	noStart   = -1
	ambiguous = -2
)

// maxKnownChunks bounds the listing chunks remembered over every
// configuration (about 60 bytes each); past it the oldest configurations'
// records are dropped, and their next commits look every reference up.
const maxKnownChunks = 1 << 18

// knownListings holds one knownListing per configuration.
type knownListings struct {
	m       map[string]*knownListing // computer + "/" + config
	order   []string                 // oldest first
	entries int
}

// learnedListing records, while a commit decodes its listing, where the
// first node of each listing chunk begins.
type learnedListing struct {
	refs   []tree.ChunkRef
	bounds []int64 // bounds[i]: offset of chunk i's first byte; one past the last
	first  []int32 // first[i]: see knownListing.starts; noStart until a node begins in chunk i
	i      int     // the chunk the decoder is in
	// known counts the references not looked up (logged).
	known int
}

func newLearned(refs []tree.ChunkRef) *learnedListing {
	l := &learnedListing{refs: refs, bounds: make([]int64, len(refs)+1), first: make([]int32, len(refs))}
	for i, r := range refs {
		l.bounds[i+1] = l.bounds[i] + int64(r.Len)
		l.first[i] = noStart
	}
	return l
}

// node notes a node spanning [start, end) of the stream and answers the
// chunk holding it wholly, or -1 when it crosses a chunk boundary.
func (l *learnedListing) node(start, end int64) int {
	for l.i < len(l.refs) && l.bounds[l.i+1] <= start {
		l.i++
	}
	if l.i == len(l.refs) {
		return -1
	}
	if l.first[l.i] == noStart {
		l.first[l.i] = int32(start - l.bounds[l.i])
	}
	if end > l.bounds[l.i+1] {
		return -1
	}
	return l.i
}

// trusted reports whether the nodes wholly inside chunk i are the known
// version's: the same chunk, the first node in it decoded from the same
// place.
func (l *learnedListing) trusted(i int, k *knownListing) bool {
	if k == nil || i < 0 {
		return false
	}
	s, ok := k.starts[l.refs[i].ID]
	return ok && s >= 0 && s == l.first[i]
}

// record is what a later commit may trust of this listing.
func (l *learnedListing) record(seq uint64) *knownListing {
	k := &knownListing{seq: seq, starts: make(map[[32]byte]int32, len(l.refs))}
	for i, r := range l.refs {
		if s, ok := k.starts[r.ID]; ok && s != l.first[i] {
			k.starts[r.ID] = ambiguous
			continue
		}
		k.starts[r.ID] = l.first[i]
	}
	return k
}

// knownFor returns the record of the configuration's newest version, if the
// vault has one, once the session protects its whole company and that
// version is still the newest (see above); nil otherwise.
func (v *Vault) knownFor(s *session, computer string) *knownListing {
	key := computer + "/" + s.config
	v.knownMu.Lock()
	k := v.known.m[key]
	v.knownMu.Unlock()
	if k == nil {
		return nil
	}
	// A quarantined chunk: the full check, so that the commit asks the
	// agent for its good copy (as sameAsNewest).
	if q, err := v.Store.AnyQuarantined(s.company); err != nil || q {
		return nil
	}
	v.gcMu.RLock()
	s.mu.Lock()
	s.protect.saturate()
	s.mu.Unlock()
	v.gcMu.RUnlock()
	m, ok, err := v.Catalog.Newest(computer, s.config)
	if err != nil {
		v.log.Warn("commit: the newest version is unreadable; every reference is looked up", zap.Error(err))
		return nil
	}
	if !ok || m.Seq != k.seq {
		return nil
	}
	return k
}

// remember keeps k as the record of the configuration's newest version.
func (v *Vault) remember(computer, config string, k *knownListing) {
	key := computer + "/" + config
	v.knownMu.Lock()
	defer v.knownMu.Unlock()
	if v.known.m == nil {
		v.known.m = map[string]*knownListing{}
	}
	if old := v.known.m[key]; old != nil {
		v.known.entries -= len(old.starts)
		for i, o := range v.known.order {
			if o == key {
				v.known.order = append(v.known.order[:i], v.known.order[i+1:]...)
				break
			}
		}
	}
	if len(k.starts) > maxKnownChunks {
		delete(v.known.m, key)
		return
	}
	v.known.m[key] = k
	v.known.order = append(v.known.order, key)
	v.known.entries += len(k.starts)
	for v.known.entries > maxKnownChunks {
		oldest := v.known.order[0]
		v.known.order = v.known.order[1:]
		v.known.entries -= len(v.known.m[oldest].starts)
		delete(v.known.m, oldest)
	}
}

// renumber keeps a record for the next version when its listing is the
// same (sameAsNewest).
func (v *Vault) renumber(computer, config string, from, to uint64) {
	v.knownMu.Lock()
	defer v.knownMu.Unlock()
	if k := v.known.m[computer+"/"+config]; k != nil && k.seq == from {
		k.seq = to
	}
}
