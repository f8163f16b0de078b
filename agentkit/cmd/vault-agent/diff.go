package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"

	"vaultnode/agentkit/client"
	"vaultnode/agentkit/restore"
	"vaultnode/agentkit/treediff"
	"vaultnode/internal/tree"
)

// runDiff compares a version (or the part under prefix) with dir, where it
// was restored (paths under dir as under "/") or its original place ("/").
// Each selected root of the version is compared with dir/ROOT.
func runDiff(ctx context.Context, a *app, c *client.Client, key [32]byte, m point, prefix []byte, dir string) error {
	rd, stop, err := restore.OpenVersion(ctx, c, key, m.m, m.journal)
	if err != nil {
		return err
	}
	defer stop()
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
	open := func(n *tree.Node) (io.ReadCloser, error) { return restore.OpenContent(ctx, c, key, n), nil }
	total := 0
	for {
		root, err := nextRaw()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if root.Type == tree.TypeDeleted {
			continue
		}
		base := root.Path
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
		target := filepath.Join(dir, string(base))
		diffs, err := treediff.CompareVersion(next, open, target, treediff.Options{})
		for _, d := range diffs {
			d.Path = []byte(filepath.Join(string(base), string(d.Path)))
			fmt.Fprintf(a.stdout, "/%s\n", d)
		}
		total += len(diffs)
		if err != nil {
			return err
		}
	}
	if total > 0 {
		return incomplete{fmt.Sprintf("%d difference(s) between %s and %s", total, m, dir)}
	}
	fmt.Fprintf(a.stdout, "no difference between %s and %s\n", m, dir)
	return nil
}
