package vault

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Browsing a version on the vault (issue 12): the portal reads a
// version's listing (and the journal records on top of it) from the
// company's packs with the bounded listing readers a commit uses, and
// answers one directory's entries a page at a time, or the entries whose
// names match a search, at most a capped number. Nothing is kept between
// requests: each page reads the listing again, up to the directory's end.

// Browse limits.
const (
	DefaultBrowsePage = 200
	MaxBrowsePage     = 1000
	// DefaultSearchResults and MaxSearchResults cap a search's answer;
	// Truncated says there were more.
	DefaultSearchResults = 200
	MaxSearchResults     = 1000
	// maxBrowsing listings are read at once; more wait (or give up with
	// their request), so browsing never takes the vault's every core.
	maxBrowsing = 2
)

// Point names a state of a configuration: Version "" or "latest" (the
// newest version with every journal record on top of it), a number (that
// version exactly), or a moment At (the version finished by then with the
// journal records made by then).
type Point struct {
	Version string    `json:"version,omitempty"`
	At      time.Time `json:"at,omitzero"`
}

// point is a resolved Point.
type point struct {
	m       wire.Manifest
	journal []wire.Journal
}

// covers is the moment the point's state covers.
func (pt point) covers() time.Time {
	if n := len(pt.journal); n > 0 {
		return pt.journal[n-1].Time
	}
	return pt.m.Finished
}

// resolve finds the version and journal records of a point of config.
func (v *Vault) resolve(cp catalog.Computer, config string, at Point) (point, error) {
	var pt point
	ms, err := v.Catalog.Versions(cp.ID, config)
	if err != nil {
		return pt, err
	}
	if len(ms) == 0 {
		return pt, fail(http.StatusNotFound, wire.CodeNotFound, "configuration %q of %s has no version yet", config, cp.Name)
	}
	switch {
	case !at.At.IsZero():
		found := false
		for _, m := range ms {
			if !m.Finished.After(at.At) {
				pt.m, found = m, true
			}
		}
		if !found {
			return pt, fail(http.StatusNotFound, wire.CodeNotFound, "%s of %s has no version finished by %s: the first finished %s",
				config, cp.Name, at.At.UTC().Format(time.RFC3339), ms[0].Finished.UTC().Format(time.RFC3339))
		}
		js, err := v.Catalog.Journal(cp.ID, config, pt.m.Seq)
		if err != nil {
			return pt, err
		}
		for _, j := range js {
			if !j.Time.After(at.At) {
				pt.journal = append(pt.journal, j)
			}
		}
	case at.Version == "" || at.Version == "latest":
		pt.m = ms[len(ms)-1]
		if pt.journal, err = v.Catalog.Journal(cp.ID, config, pt.m.Seq); err != nil {
			return pt, err
		}
	default:
		n, err := strconv.ParseUint(at.Version, 10, 64)
		if err != nil {
			return pt, fail(http.StatusBadRequest, wire.CodeBadRequest, "version %q: give a number, latest, or a moment (at)", at.Version)
		}
		found := false
		for _, m := range ms {
			if m.Seq == n {
				pt.m, found = m, true
			}
		}
		if !found {
			return pt, fail(http.StatusNotFound, wire.CodeNotFound, "%s@%d of %s does not exist", config, n, cp.Name)
		}
	}
	return pt, nil
}

// BrowseRequest asks for one directory of a version, or searches it.
type BrowseRequest struct {
	Computer string `json:"computer"`
	Config   string `json:"config"`
	Point
	// Dir is the directory, as an absolute path ("/" or "": the root).
	Dir string `json:"dir,omitempty"`
	// Search, when set, finds the entries below Dir whose name contains it
	// (case-insensitive), or matches it when it is a glob (* ? [..]).
	Search string `json:"search,omitempty"`
	Offset int    `json:"offset,omitempty"`
	Limit  int    `json:"limit,omitempty"`
}

// VersionEntry is one object of a version as the portal shows it.
type VersionEntry struct {
	Path  string    `json:"path"` // absolute
	Name  string    `json:"name"`
	Type  string    `json:"type"` // file, dir, symlink, ...
	Size  int64     `json:"size,omitempty"`
	Mode  string    `json:"mode,omitempty"` // permission bits, octal
	User  string    `json:"user,omitempty"`
	Group string    `json:"group,omitempty"`
	Mtime time.Time `json:"mtime,omitzero"`
	// Status is "unreadable" or "inconsistent" when the version lacks the
	// object's content, with Err saying why.
	Status string `json:"status,omitempty"`
	Err    string `json:"error,omitempty"`
	Target string `json:"target,omitempty"` // a symlink's
}

// BrowseResult is a page of a directory or a search's results.
type BrowseResult struct {
	Computer string         `json:"computer"`
	Config   string         `json:"config"`
	Seq      uint64         `json:"seq"`
	Journal  int            `json:"journal_records"` // applied on top of Seq
	Covers   time.Time      `json:"covers"`
	Dir      string         `json:"dir"`
	Search   string         `json:"search,omitempty"`
	Entries  []VersionEntry `json:"entries"`
	// Total counts the directory's entries (a search's matches, at most
	// its cap); Offset is where Entries start.
	Total     int  `json:"total"`
	Offset    int  `json:"offset"`
	Truncated bool `json:"truncated,omitempty"` // a search found more than its cap
}

// listingPath turns an absolute path (or one relative to the root) into
// a listing path: "" for the root.
func listingPath(p string) string {
	return strings.Trim(path.Clean("/"+p), "/")
}

// Browse answers a page of one directory of a version, or a search below
// it. Listing a version's files needs restore over its computer.
func (v *Vault) Browse(ctx context.Context, p *Principal, req BrowseRequest) (BrowseResult, error) {
	cp, err := v.computerFor(p, CapRestore, req.Computer)
	if err != nil {
		return BrowseResult{}, err
	}
	pt, err := v.resolve(cp, req.Config, req.Point)
	if err != nil {
		return BrowseResult{}, err
	}
	dir := listingPath(req.Dir)
	out := BrowseResult{Computer: cp.ID, Config: req.Config, Seq: pt.m.Seq, Journal: len(pt.journal), Covers: pt.covers(),
		Dir: "/" + dir, Search: req.Search, Entries: []VersionEntry{}, Offset: max(req.Offset, 0)}
	limit := req.Limit
	if req.Search != "" {
		if limit <= 0 {
			limit = DefaultSearchResults
		}
		limit = min(limit, MaxSearchResults)
	} else {
		if limit <= 0 {
			limit = DefaultBrowsePage
		}
		limit = min(limit, MaxBrowsePage)
	}
	select {
	case v.browsing <- struct{}{}:
		defer func() { <-v.browsing }()
	case <-ctx.Done():
		return out, ctx.Err()
	}
	nodes, stop, err := v.openPoint(ctx, cp.Company, pt)
	if err != nil {
		return out, err
	}
	defer stop()
	match := searcher(req.Search)
	prefix := []byte(dir + "/")
	if dir == "" {
		prefix = nil
	}
	var last string // the last child named: a directory's subtree follows it
	seen := false   // met the directory's subtree
	for {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		n, err := nodes.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return out, browseErr(err)
		}
		if string(n.Path) == "." || n.Type == tree.TypeDeleted || string(n.Path) == dir {
			continue
		}
		if !bytes.HasPrefix(n.Path, prefix) {
			if seen && tree.Compare(n.Path, []byte(dir)) > 0 {
				break // past the directory: tree order keeps a subtree together
			}
			continue
		}
		seen = true
		rel := n.Path[len(prefix):]
		if match != nil {
			if !match(string(rel[bytes.LastIndexByte(rel, '/')+1:])) {
				continue
			}
			if out.Total == limit {
				out.Truncated = true
				break
			}
			out.Total++
			out.Entries = append(out.Entries, entryOf(n))
			continue
		}
		child, deeper := string(rel), false
		if i := strings.IndexByte(child, '/'); i >= 0 {
			child, deeper = child[:i], true
		}
		if child == last {
			continue
		}
		last = child
		out.Total++
		if out.Total <= out.Offset || len(out.Entries) == limit {
			continue
		}
		if deeper { // a directory the listing does not record itself
			out.Entries = append(out.Entries, VersionEntry{Path: "/" + string(prefix) + child, Name: child, Type: tree.TypeDir.String()})
		} else {
			out.Entries = append(out.Entries, entryOf(n))
		}
	}
	if match != nil {
		out.Offset = 0
	}
	return out, nil
}

// openPoint streams the nodes of a point from the company's packs.
func (v *Vault) openPoint(ctx context.Context, company string, pt point) (tree.Nodes, func(), error) {
	k, err := v.companyKeys(company)
	if err != nil {
		return nil, nil, err
	}
	open := func(refs []tree.ChunkRef) (*tree.Reader, io.Closer, error) {
		lr := v.listingReader(company, k, refs, nil)
		rd, err := tree.NewListingReader(lr, refs)
		if err != nil {
			lr.Close()
			return nil, nil, browseErr(err)
		}
		return rd, lr, nil
	}
	base, bc, err := open(pt.m.Listing)
	if err != nil {
		return nil, nil, err
	}
	rds := make([]tree.Nodes, len(pt.journal))
	for i, j := range pt.journal {
		rds[i] = &lazyNodes{open: open, refs: j.Listing}
	}
	nodes, err := tree.Merge(base, rds) // reads the records whole, one after the other
	for _, r := range rds {
		r.(*lazyNodes).close()
	}
	if err != nil {
		bc.Close()
		return nil, nil, browseErr(err)
	}
	return nodes, func() { bc.Close() }, nil
}

// lazyNodes opens a journal record's listing at its first read and closes
// it at its end, so one record is read at a time.
type lazyNodes struct {
	open func([]tree.ChunkRef) (*tree.Reader, io.Closer, error)
	refs []tree.ChunkRef
	rd   *tree.Reader
	c    io.Closer
}

func (l *lazyNodes) Next() (*tree.Node, error) {
	if l.rd == nil {
		rd, c, err := l.open(l.refs)
		if err != nil {
			return nil, err
		}
		l.rd, l.c = rd, c
	}
	n, err := l.rd.Next()
	if err == io.EOF {
		l.close()
	}
	return n, err
}

func (l *lazyNodes) close() {
	if l.c != nil {
		l.c.Close()
		l.c = nil
	}
}

// browseErr: a listing the vault cannot read is its own fault (logged as
// internal), but one over a limit is named.
func browseErr(err error) error {
	if tree.IsLimit(err) {
		return fail(http.StatusUnprocessableEntity, wire.CodeLimit, "the version's listing is over a limit: %v", err)
	}
	return fmt.Errorf("read version listing: %w", err)
}

// searcher matches names: nil for no search; a glob (* ? [..]) matches the
// whole name, anything else is found in it; both ignore case.
func searcher(q string) func(string) bool {
	if q == "" {
		return nil
	}
	q = strings.ToLower(q)
	if strings.ContainsAny(q, "*?[") {
		if _, err := path.Match(q, ""); err == nil {
			return func(name string) bool { ok, _ := path.Match(q, strings.ToLower(name)); return ok }
		}
	}
	return func(name string) bool { return strings.Contains(strings.ToLower(name), q) }
}

func entryOf(n *tree.Node) VersionEntry {
	p := string(n.Path)
	e := VersionEntry{Path: "/" + p, Name: p[strings.LastIndexByte(p, '/')+1:], Type: n.Type.String(), Size: n.Size,
		Mode: fmt.Sprintf("%04o", n.Mode&0o7777), User: n.User, Group: n.Group, Err: n.Err}
	if n.Mtime.Sec != 0 || n.Mtime.Nsec != 0 {
		e.Mtime = time.Unix(n.Mtime.Sec, n.Mtime.Nsec).UTC()
	}
	switch n.Status {
	case tree.StatusUnreadable:
		e.Status = "unreadable"
	case tree.StatusInconsistent:
		e.Status = "inconsistent"
	}
	if n.Type == tree.TypeSymlink {
		e.Target = string(n.Target)
	}
	if n.Type != tree.TypeFile {
		e.Size = 0
	}
	return e
}
