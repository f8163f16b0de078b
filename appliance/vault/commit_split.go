package vault

import (
	"context"
	"io"

	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// A commit's check in two halves.
//
// A commit whose listing differs from the newest version's decodes every
// node of it, on one core, while its agent waits for the answer (the small
// files' no-change backup: 150,000 nodes, about a tenth of the backup's
// time). A listing is a stream of nodes cut into chunks by content, so a
// node may begin anywhere in a chunk, and decoding from anywhere but a node's
// start frames garbage. What the newest version's commit learned (known.go)
// says where the first node beginning in each of its listing chunks began:
// for a chunk the new listing shares, that is a likely node boundary. A
// second decoder starts there (the seam), on another goroutine, and checks
// the listing's second half as the first decoder checks the first: nodes,
// order, totals, the examination's facts, lookups. The first decoder, from
// the listing's start, is the authority: only when its last node ends
// exactly at the seam, and the second decoder found no fault and its first
// path follows the first decoder's last, are the halves' results joined;
// else the first decoder reads on past the seam as if there had been no
// second one, whose results are dropped. So a listing is accepted exactly
// when one decoder from its start would accept it, with the same totals
// and facts (factsGatherer.merge keeps their order).
//
// The second half looks up the references of the seam's chunk whatever the
// known record says (the first decoder may have begun a node in that chunk
// before the seam, so the second's view of where its first node begins may
// be wrong); past it, it sees every node boundary and trusts chunks as the
// first decoder does.

// splitMinBytes is the least listing split in two: below it a second
// decoder and reader cost more than they save. (A variable for tests.)
var splitMinBytes int64 = 2 << 20

// testHookSplit, set by tests, is told whether a commit joined its second
// half's results (true) or read on past the seam alone (false).
var testHookSplit func(joined bool)

// listingSplit is a second decoder's work on a listing's tail.
type listingSplit struct {
	seam   int64 // the stream offset where the tail begins
	j      int   // the listing chunk holding the seam
	cancel context.CancelFunc
	done   chan struct{}
	res    tailResult
}

// tailResult is what the second decoder found.
type tailResult struct {
	t       wire.Totals
	facts   *factsGatherer
	learned *learnedListing
	first   []byte // the tail's first path
	err     error
}

// chooseSeam answers the listing chunk nearest the middle of listing whose
// first node's place known records, and that place; ok false when there is
// none or the listing is too small to split.
func chooseSeam(listing []tree.ChunkRef, known *knownListing) (j int, skip int64, seam int64, ok bool) {
	if known == nil || len(listing) < 4 {
		return 0, 0, 0, false
	}
	var total int64
	for _, r := range listing {
		total += int64(r.Len)
	}
	if total < splitMinBytes {
		return 0, 0, 0, false
	}
	var off, best int64
	j = -1
	for i, r := range listing {
		if s, known := known.starts[r.ID]; i > 0 && known && s >= 0 && s < int32(r.Len) {
			at := off + int64(s)
			if d := abs64(at - total/2); j < 0 || d < best {
				j, skip, seam, best = i, int64(s), at, d
			}
		}
		off += int64(r.Len)
	}
	return j, skip, seam, j >= 0
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// startSplit starts a second decoder on listing's tail from a seam chosen
// by chooseSeam, or returns nil.
func (v *Vault) startSplit(ctx context.Context, s *session, k *companyKeys, listing []tree.ChunkRef, facts *factsGatherer,
	known *knownListing, check func([][32]byte) error) *listingSplit {
	j, skip, seam, ok := chooseSeam(listing, known)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	sp := &listingSplit{seam: seam, j: j, cancel: cancel, done: make(chan struct{})}
	var tailFacts *factsGatherer
	if facts != nil {
		tailFacts = &factsGatherer{roots: facts.roots}
	}
	go func() {
		defer close(sp.done)
		sp.res = v.checkTail(ctx, s, k, listing, j, skip, tailFacts, known, check)
	}()
	return sp
}

// wait waits for the tail's check and answers it when it may be joined to
// a head whose last node, at path last, ended at the seam.
func (sp *listingSplit) wait(last []byte) (tailResult, bool) {
	<-sp.done
	r := sp.res
	return r, r.err == nil && r.first != nil && tree.Compare(last, r.first) < 0
}

// stop ends the tail's check, if it still runs, and waits for it.
func (sp *listingSplit) stop() {
	sp.cancel()
	<-sp.done
}

// checkTail checks the nodes of listing from chunk j's byte skip on, as
// checkListingKnown checks a whole listing, looking references up with
// check.
func (v *Vault) checkTail(ctx context.Context, s *session, k *companyKeys, listing []tree.ChunkRef, j int, skip int64,
	facts *factsGatherer, known *knownListing, check func([][32]byte) error) tailResult {
	r := tailResult{facts: facts, learned: newLearned(listing)}
	refs := listing[j:]
	lr := v.listingReader(s.company, k, refs, s)
	defer lr.Close()
	rd, err := tree.NewTailReader(lr, refs, skip)
	if err != nil {
		r.err = err
		return r
	}
	rd.Reuse()
	base := r.learned.bounds[j]
	pending := make([][32]byte, 0, listingLookupBatch)
	flush := func() error {
		err := check(pending)
		pending = pending[:0]
		return err
	}
	for {
		if r.err = ctx.Err(); r.err != nil {
			return r
		}
		start := base + rd.Offset()
		n, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			r.err = err
			return r
		}
		if r.first == nil {
			r.first = append([]byte{}, n.Path...)
		}
		i := r.learned.node(start, base+rd.Offset())
		if r.err = tallyNode(&r.t, facts, r.learned, n, i > j && r.learned.trusted(i, known), &pending, flush); r.err != nil {
			return r
		}
	}
	if len(pending) > 0 {
		r.err = check(pending)
	}
	return r
}

// countNode adds n to the totals t.
func countNode(t *wire.Totals, n *tree.Node) {
	switch n.Type {
	case tree.TypeFile:
		t.Files++
		t.Bytes += n.Size
	case tree.TypeDir:
		t.Dirs++
	case tree.TypeDeleted:
		t.Deleted++
	}
	switch n.Status {
	case tree.StatusUnreadable:
		t.Unreadable++
	case tree.StatusInconsistent:
		t.Inconsistent++
	}
}

// addTotals adds the node counts of u to t.
func addTotals(t *wire.Totals, u wire.Totals) {
	t.Files += u.Files
	t.Bytes += u.Bytes
	t.Dirs += u.Dirs
	t.Deleted += u.Deleted
	t.Unreadable += u.Unreadable
	t.Inconsistent += u.Inconsistent
}

// joinTail adds a tail's results, from chunk j on, to the head's.
func joinTail(t *wire.Totals, facts *factsGatherer, learned *learnedListing, tail tailResult, j int) {
	addTotals(t, tail.t)
	if facts != nil {
		facts.merge(tail.facts)
	}
	for i := j; i < len(learned.first); i++ {
		if learned.first[i] == noStart {
			learned.first[i] = tail.learned.first[i]
		}
	}
	learned.known += tail.learned.known
}
