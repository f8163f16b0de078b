// Package compare compares a version with files on disk: where it was
// restored, or its original place. It is the engine of `vault-agent diff`
// and of the command channel's compare command (the portal's "what changed
// since this version").
package compare

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"vaultnode/agentkit/restore"
	"vaultnode/agentkit/treediff"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Versions is what resolving a version needs of the vault.
type Versions interface {
	Versions(ctx context.Context, config string) ([]wire.Manifest, error)
	JournalOf(ctx context.Context, config string, base uint64) ([]wire.Journal, error)
}

// Resolve finds version seq of config (0: the newest, with the journal
// records on top of it).
func Resolve(ctx context.Context, c Versions, config string, seq uint64) (wire.Manifest, []wire.Journal, error) {
	ms, err := c.Versions(ctx, config)
	if err != nil {
		return wire.Manifest{}, nil, err
	}
	if len(ms) == 0 {
		return wire.Manifest{}, nil, fmt.Errorf("configuration %q has no version yet", config)
	}
	if seq == 0 {
		m := ms[len(ms)-1]
		js, err := c.JournalOf(ctx, config, m.Seq)
		return m, js, err
	}
	for _, m := range ms {
		if m.Seq == seq {
			return m, nil, nil
		}
	}
	return wire.Manifest{}, nil, fmt.Errorf("%s@%d does not exist", config, seq)
}

// Run compares the version m (with journal records on top), or its part
// under prefix (a listing path), with dir, calling emit for each
// difference with its path as on the computer ("/" and the listing path).
// dir is either where the version was restored (each root ROOT of the
// version is compared with dir/ROOT) or the original place of one of its
// roots, or of prefix (that root, or prefix, is compared with dir itself:
// `vault-agent diff docs@1 /usr/share/doc`). It returns the number of
// differences.
func Run(ctx context.Context, src restore.Source, key [32]byte, m wire.Manifest, journal []wire.Journal, prefix []byte, dir string, opts treediff.Options, emit func(treediff.Difference)) (int, error) {
	rd, stop, err := restore.OpenVersion(ctx, src, key, m, journal)
	if err != nil {
		return 0, err
	}
	defer stop()
	dir = filepath.Clean(dir)
	original := strings.TrimPrefix(dir, "/") // dir as a listing path, when it is an original place
	var pending *tree.Node
	nextRaw := func() (*tree.Node, error) {
		if pending != nil {
			n := pending
			pending = nil
			return n, nil
		}
		for {
			n, err := rd.Next()
			if err != nil {
				return nil, err
			}
			if len(prefix) == 0 || bytes.Equal(n.Path, prefix) || bytes.HasPrefix(n.Path, append(bytes.Clone(prefix), '/')) {
				return n, nil
			}
		}
	}
	// The roots to compare: the version's own roots, or prefix alone; one
	// whose original place is dir is compared with dir itself.
	total := 0
	for {
		root, err := nextRaw()
		if err == io.EOF {
			break
		}
		if err != nil {
			return total, err
		}
		if root.Type == tree.TypeDeleted {
			continue
		}
		base := bytes.Clone(root.Path)
		target := filepath.Join(dir, string(base))
		if dir != "/" && string(base) == original {
			target = dir
		}
		// Yield the nodes under base with base stripped, so base is ".".
		next := func() (*tree.Node, error) {
			if root != nil {
				n := *root
				root = nil
				n.Path = []byte(".")
				return &n, nil
			}
			n, err := nextRaw()
			if err != nil {
				return nil, err
			}
			if !bytes.HasPrefix(n.Path, append(bytes.Clone(base), '/')) {
				pending = n
				return nil, io.EOF
			}
			c := *n
			c.Path = n.Path[len(base)+1:]
			if c.LinkTo != nil && bytes.HasPrefix(c.LinkTo, append(bytes.Clone(base), '/')) {
				c.LinkTo = c.LinkTo[len(base)+1:]
			}
			return &c, nil
		}
		open := func(n *tree.Node) (io.ReadCloser, error) { return restore.OpenContent(ctx, src, key, n), nil }
		diffs, err := treediff.CompareVersion(next, open, target, opts)
		for _, d := range diffs {
			d.Path = []byte("/" + filepath.Join(string(base), string(d.Path)))
			emit(d)
		}
		total += len(diffs)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
