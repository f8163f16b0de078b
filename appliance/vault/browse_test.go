package vault

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// listingOf stores nodes (sorted into tree order here) as a listing of
// acme, in chunks of at most every nodes, so a reader crosses chunks.
func listingOf(t testing.TB, v *Vault, every int, nodes ...*tree.Node) []tree.ChunkRef {
	t.Helper()
	k, err := v.companyKeys("acme")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(nodes, func(a, b *tree.Node) int { return tree.Compare(a.Path, b.Path) })
	var buf bytes.Buffer
	b, _ := tree.Marshal(tree.ListingMagic)
	buf.Write(b)
	var refs []tree.ChunkRef
	for i, n := range nodes {
		b, err := tree.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		if (i+1)%every == 0 {
			refs = append(refs, putListing(t, v, k, bytes.Clone(buf.Bytes())))
			buf.Reset()
		}
	}
	if buf.Len() > 0 {
		refs = append(refs, putListing(t, v, k, buf.Bytes()))
	}
	return refs
}

func file(p string, size int64) *tree.Node {
	n := &tree.Node{Path: []byte(p), Type: tree.TypeFile, Size: size, Mode: 0o644, User: "ann", Mtime: tree.Timespec{Sec: 1764590000}}
	if size > 0 {
		n.Chunks = []tree.ChunkRef{{ID: [32]byte{byte(size)}, Len: uint32(size)}}
	}
	return n
}

func dir(p string) *tree.Node { return &tree.Node{Path: []byte(p), Type: tree.TypeDir, Mode: 0o755} }

// TestBrowseVersion: a version's directories a page at a time (with the
// directories its listing does not record itself), the journal records on
// top of it by version and by moment, a search by name and glob with its
// cap, and the scope of who may browse.
func TestBrowseVersion(t *testing.T) {
	pv := servePortal(t)
	v := pv.Vault
	cp, _ := v.Catalog.FindComputer("pc-a1")
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	nodes := []*tree.Node{dir("."), dir("home"), dir("home/ann"), file("home/ann/a.txt", 10), file("home/ann/b.log", 20),
		file("home/bob/c.txt", 30), file("srv/x", 1), {Path: []byte("home/ann/link"), Type: tree.TypeSymlink, Target: []byte("a.txt")},
		{Path: []byte("home/ann/gone"), Type: tree.TypeFile, Status: tree.StatusUnreadable, Err: "permission denied"}, dir("big")}
	for i := range 250 {
		nodes = append(nodes, file(fmt.Sprintf("big/f%03d.dat", i), int64(i)))
	}
	m := wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: cp.ID, Config: "home", Seq: 1, Started: start,
		Finished: start.Add(time.Minute), Listing: listingOf(t, v, 7, nodes...)}
	if err := v.Catalog.AddVersion(m, [32]byte{1}); err != nil {
		t.Fatal(err)
	}
	jt := start.Add(time.Hour)
	if _, err := v.Catalog.AddJournal(cp.ID, "home", wire.Journal{Base: 1, Time: jt, Listing: listingOf(t, v, 100,
		file("home/ann/a.txt", 11), &tree.Node{Path: []byte("home/ann/b.log"), Type: tree.TypeDeleted}, file("home/ann/new.txt", 5))}); err != nil {
		t.Fatal(err)
	}
	names := func(r BrowseResult) string {
		var s []string
		for _, e := range r.Entries {
			s = append(s, fmt.Sprintf("%s:%s:%d", e.Name, e.Type, e.Size))
		}
		return strings.Join(s, " ")
	}
	browse := func(req BrowseRequest) BrowseResult {
		t.Helper()
		req.Computer, req.Config = "pc-a1", "home"
		r, err := v.Browse(t.Context(), operator, req)
		if err != nil {
			t.Fatalf("browse %+v: %v", req, err)
		}
		return r
	}
	for _, c := range []struct {
		req  BrowseRequest
		want string
	}{
		{BrowseRequest{}, "big:dir:0 home:dir:0 srv:dir:0"},
		{BrowseRequest{Dir: "/home"}, "ann:dir:0 bob:dir:0"},
		{BrowseRequest{Dir: "home/bob/"}, "c.txt:file:30"},
		{BrowseRequest{Dir: "/home/ann", Point: Point{Version: "1"}}, "a.txt:file:10 b.log:file:20 gone:file:0 link:symlink:0"},
		{BrowseRequest{Dir: "/home/ann"}, "a.txt:file:11 gone:file:0 link:symlink:0 new.txt:file:5"},
		{BrowseRequest{Dir: "/home/ann", Point: Point{At: jt.Add(-time.Second)}}, "a.txt:file:10 b.log:file:20 gone:file:0 link:symlink:0"},
		{BrowseRequest{Dir: "/home/ann", Point: Point{At: jt}}, "a.txt:file:11 gone:file:0 link:symlink:0 new.txt:file:5"},
		{BrowseRequest{Dir: "/big", Offset: 248}, "f248.dat:file:248 f249.dat:file:249"},
		{BrowseRequest{Search: "*.TXT"}, "a.txt:file:11 new.txt:file:5 c.txt:file:30"},
		{BrowseRequest{Dir: "/home/bob", Search: "txt"}, "c.txt:file:30"},
		{BrowseRequest{Search: "f24?.dat", Limit: 3}, "f240.dat:file:240 f241.dat:file:241 f242.dat:file:242"},
	} {
		if got := names(browse(c.req)); got != c.want {
			t.Errorf("%+v:\n got %s\nwant %s", c.req, got, c.want)
		}
	}
	r := browse(BrowseRequest{Dir: "/big", Offset: 100, Limit: 50})
	if r.Total != 250 || len(r.Entries) != 50 || r.Entries[0].Name != "f100.dat" || r.Entries[0].Path != "/big/f100.dat" || r.Truncated {
		t.Errorf("page of /big: total %d, %d entries from %+v", r.Total, len(r.Entries), r.Entries[0])
	}
	r = browse(BrowseRequest{Search: "f24?.dat", Limit: 3})
	if !r.Truncated || r.Total != 3 {
		t.Errorf("a capped search: truncated %v, total %d", r.Truncated, r.Total)
	}
	r = browse(BrowseRequest{Dir: "/home/ann"})
	if r.Seq != 1 || r.Journal != 1 || !r.Covers.Equal(jt) {
		t.Errorf("latest: seq %d with %d journal records covering %v", r.Seq, r.Journal, r.Covers)
	}
	if e := r.Entries[1]; e.Status != "unreadable" || e.Err != "permission denied" {
		t.Errorf("an unreadable file shows as %+v", e)
	}
	if e := r.Entries[2]; e.Target != "a.txt" {
		t.Errorf("a symlink shows as %+v", e)
	}
	if _, err := v.Browse(t.Context(), operator, BrowseRequest{Computer: "pc-a1", Config: "home", Point: Point{At: start}}); err == nil {
		t.Error("a moment before the first version answered")
	}

	// Who may browse: restore over the computer.
	for _, c := range []struct {
		p      *Principal
		status int
	}{
		{&Principal{Kind: User, Name: "viewer", Company: "acme", Caps: []Capability{CapView}}, 403},
		{&Principal{Kind: User, Name: "restorer of globex", Company: "globex", Caps: []Capability{CapView, CapRestore}}, 404},
		{&Principal{Kind: User, Name: "restorer of pc-a2", Company: "acme", Computers: []string{"pc-a2"}, Caps: []Capability{CapView, CapRestore}}, 404},
		{&Principal{Kind: User, Name: "restorer of pc-a1", Company: "acme", Computers: []string{"pc-a1"}, Caps: []Capability{CapView, CapRestore}}, 200},
	} {
		_, err := v.Browse(t.Context(), c.p, BrowseRequest{Computer: "pc-a1", Config: "home"})
		status := 200
		if ae, ok := err.(*apiError); ok {
			status = ae.status
		} else if err != nil {
			t.Fatal(err)
		}
		if status != c.status {
			t.Errorf("%s browses pc-a1: %d (%v), want %d", c.p, status, err, c.status)
		}
	}

	// The computer's page data: the version and its journal record.
	d, err := v.ComputerDetail(t.Context(), operator, "pc-a1")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Configs) != 1 || len(d.Configs[0].Versions) != 1 || d.Configs[0].Versions[0].Seq != 1 {
		t.Fatalf("detail: %+v", d)
	}
}

// BenchmarkBrowse reads a directory page and a search of a version of
// 100,000 files in 1,000 directories.
func BenchmarkBrowse(b *testing.B) {
	v := openTestVault(b)
	cp := catalog.Computer{ID: "pc-1", Company: "acme", Name: "pc-1"}
	if err := v.Catalog.RecordComputer(cp); err != nil {
		b.Fatal(err)
	}
	nodes := []*tree.Node{dir(".")}
	for d := range 1000 {
		nodes = append(nodes, dir(fmt.Sprintf("d%04d", d)))
		for f := range 100 {
			nodes = append(nodes, file(fmt.Sprintf("d%04d/f%03d.dat", d, f), 10))
		}
	}
	start := time.Now()
	if err := v.Catalog.AddVersion(wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: cp.ID, Config: "home", Seq: 1,
		Started: start, Finished: start, Listing: listingOf(b, v, 5000, nodes...)}, [32]byte{1}); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		req  BrowseRequest
	}{{"root", BrowseRequest{}}, {"last-dir", BrowseRequest{Dir: "/d0999"}}, {"search", BrowseRequest{Search: "f05?.dat", Limit: 1000}}} {
		b.Run(c.name, func(b *testing.B) {
			c.req.Computer, c.req.Config = cp.ID, "home"
			for b.Loop() {
				if _, err := v.Browse(b.Context(), operator, c.req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
