package restore

import (
	"context"
	"fmt"
	"io"

	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Nodes yields a version's nodes in tree order, then io.EOF.
type Nodes = tree.Nodes

// OpenVersion streams the state of a configuration made of version m and
// the continuous-mode journal records on top of it (in order), merged by
// tree.Merge.
func OpenVersion(ctx context.Context, src Source, chunkKey [32]byte, m wire.Manifest, journal []wire.Journal) (Nodes, func(), error) {
	base, stop, err := OpenListing(ctx, src, chunkKey, m.Listing)
	if err != nil {
		return nil, nil, err
	}
	if len(journal) == 0 {
		return base, stop, nil
	}
	rds := make([]tree.Nodes, len(journal))
	for k, j := range journal {
		rds[k] = &lazyListing{ctx: ctx, src: src, key: chunkKey, j: j}
	}
	mg, err := tree.Merge(base, rds) // reads the records one after the other
	for _, rd := range rds {
		rd.(*lazyListing).close()
	}
	if err != nil {
		stop()
		return nil, nil, err
	}
	return mg, stop, nil
}

// lazyListing opens a journal record's listing at its first read and
// closes it at its end, so only one record is read at a time.
type lazyListing struct {
	ctx  context.Context
	src  Source
	key  [32]byte
	j    wire.Journal
	rd   *tree.Reader
	stop func()
}

func (l *lazyListing) Next() (*tree.Node, error) {
	if l.rd == nil {
		rd, stop, err := OpenListing(l.ctx, l.src, l.key, l.j.Listing)
		if err != nil {
			return nil, fmt.Errorf("read journal record %d: %w", l.j.N, err)
		}
		l.rd, l.stop = rd, stop
	}
	n, err := l.rd.Next()
	if err == io.EOF {
		l.close()
	}
	return n, err
}

func (l *lazyListing) close() {
	if l.stop != nil {
		l.stop()
		l.stop = nil
	}
}
