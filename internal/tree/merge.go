package tree

import (
	"bytes"
	"fmt"
	"io"
	"sort"
)

// Nodes yields nodes in tree order, then io.EOF.
type Nodes interface {
	Next() (*Node, error)
}

// Merge streams the state of a configuration made of a version's nodes
// (base) and the continuous-mode journal records on top of it (in order):
// a journal node replaces the version's node at its path, and a deleted
// directory hides everything below it that is older than the deletion.
// It reads every journal record at once (they hold changed nodes only) and
// then base as the caller reads. The agent's restore and the vault's
// browsing share it.
func Merge(base Nodes, journal []Nodes) (Nodes, error) {
	if len(journal) == 0 {
		return base, nil
	}
	mg := &merged{base: base, deleted: map[string]int{}}
	latest := map[string]int{} // path -> index in mg.delta
	for k, rd := range journal {
		for {
			n, err := rd.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("read journal record %d of %d: %w", k+1, len(journal), err)
			}
			if i, ok := latest[string(n.Path)]; ok {
				mg.delta[i] = deltaNode{n: n, k: k}
			} else {
				latest[string(n.Path)] = len(mg.delta)
				mg.delta = append(mg.delta, deltaNode{n: n, k: k})
			}
			if n.Type == TypeDeleted {
				mg.deleted[string(n.Path)] = k
			}
		}
	}
	sort.Slice(mg.delta, func(i, j int) bool { return Compare(mg.delta[i].n.Path, mg.delta[j].n.Path) < 0 })
	return mg, nil
}

type deltaNode struct {
	n *Node
	k int // journal record index; the version itself is -1
}

type merged struct {
	base    Nodes
	bcur    *Node
	bdone   bool
	delta   []deltaNode
	deleted map[string]int // path of a deleted object -> record index
}

// hidden reports whether a node recorded at index k lies under (or is) a
// path deleted by a later record.
func (m *merged) hidden(p []byte, k int, self bool) bool {
	for i := len(p); i > 0; i = bytes.LastIndexByte(p[:i], '/') {
		if d, ok := m.deleted[string(p[:i])]; ok && d > k && (self || i < len(p)) {
			return true
		}
		if bytes.LastIndexByte(p[:i], '/') < 0 {
			break
		}
	}
	return false
}

func (m *merged) Next() (*Node, error) {
	for {
		if m.bcur == nil && !m.bdone {
			n, err := m.base.Next()
			if err == io.EOF {
				m.bdone = true
			} else if err != nil {
				return nil, err
			} else {
				m.bcur = n
			}
		}
		var next *Node
		k := -1
		switch {
		case m.bcur == nil && len(m.delta) == 0:
			return nil, io.EOF
		case m.bcur == nil:
			next, k = m.delta[0].n, m.delta[0].k
			m.delta = m.delta[1:]
		case len(m.delta) == 0:
			next, m.bcur = m.bcur, nil
		default:
			c := Compare(m.delta[0].n.Path, m.bcur.Path)
			if c <= 0 {
				next, k = m.delta[0].n, m.delta[0].k
				m.delta = m.delta[1:]
				if c == 0 {
					m.bcur = nil // the journal's state replaces the version's
				}
			} else {
				next, m.bcur = m.bcur, nil
			}
		}
		// A node is hidden by a later deletion of an ancestor, or of
		// itself when it comes from the version.
		if m.hidden(next.Path, k, k < 0) {
			continue
		}
		return next, nil
	}
}
