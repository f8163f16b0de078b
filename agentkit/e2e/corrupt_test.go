package e2e

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/treediff"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
)

// entryLoc is where a chunk's entry lies on disk.
type entryLoc struct {
	path    string
	offset  int64
	bodyLen uint32
}

// findEntry scans every pack of a vault for the entry of a chunk id.
func findEntry(t *testing.T, vaultDir string, id [32]byte) entryLoc {
	t.Helper()
	var found []entryLoc
	err := filepath.WalkDir(filepath.Join(vaultDir, "packs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || !strings.HasSuffix(p, ".pack") {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		sc, err := pack.NewScanner(f)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for {
			e, err := sc.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if e.Header.ID == id && e.Header.Kind == pack.KindData {
				found = append(found, entryLoc{p, e.Offset, e.Header.BodyLen})
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 {
		t.Fatalf("chunk %x is in %d pack entries, want 1", id[:8], len(found))
	}
	return found[0]
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptPack flips one byte inside a data entry on disk: verify names
// the pack, offset, chunk and the affected file; restoring that file fails
// loudly; every other file restores.
func TestCorruptPack(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 3)
	g.makeTree(100, 5<<20)
	// Metadata beyond mode and times on the unaffected files, so that the
	// comparisons below have an owner and xattrs to check.
	for i, rel := range []string{"docs/d04/f014.txt", "docs/d05/f015.txt", "private/secret", "sparse/holes.img"} {
		p := filepath.Join(e.src, rel)
		if err := unix.Setxattr(p, "user.vaultnode.test", []byte(fmt.Sprintf("value %d", i)), 0); err != nil {
			t.Fatalf("set an xattr on %s (the e2e tests need user xattrs in TMPDIR): %v", rel, err)
		}
		if err := os.Lchown(p, 1000+i, 2000+i); err != nil {
			t.Fatalf("chown %s (the e2e tests run as root): %v", rel, err)
		}
	}
	snap := snapshot(t, e.src)
	e.a.backup("home")
	e.a.backup("home") // a second version referencing the same chunks

	const victim = "docs/d03/f013.txt"
	content, err := os.ReadFile(filepath.Join(e.src, victim))
	if err != nil || len(content) < 100 {
		t.Fatalf("victim file: %d bytes, %v", len(content), err)
	}
	_, comp := agentClient(t, e.a.state)
	id := [32]byte(keys.NewHasher([32]byte(comp.ChunkKey)).Sum(content))
	loc := findEntry(t, e.v.dir, id)
	flipByte(t, loc.path, loc.offset+pack.EntryHeaderSize+int64(loc.bodyLen)/2)

	listingPath := strings.TrimPrefix(filepath.Join(e.src, victim), "/")
	r := e.v.ctl("verify")
	if r.code != 3 {
		t.Fatalf("verify of a damaged store: want exit 3; got %s", r)
	}
	for _, want := range []string{loc.path, fmt.Sprintf("offset %d", loc.offset), hex.EncodeToString(id[:]), listingPath, "home@1", "home@2"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("verify output does not name %q:\n%s", want, r.stdout)
		}
	}
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(line, "DAMAGED") && !strings.Contains(line, listingPath) && !strings.Contains(line, loc.path) {
			t.Errorf("verify reports damage beyond the flipped entry: %s", line)
		}
	}

	// The affected file alone.
	to := filepath.Join(e.root, "one")
	r = e.a.run("restore", "home@2:"+filepath.Join(e.src, victim), "-to", to, "-setid")
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, victim) {
		t.Errorf("restore of the damaged file: want a failure naming it; got %s", r)
	}
	if b, err := os.ReadFile(filepath.Join(to, e.src, victim)); err == nil && string(b) != string(content) {
		t.Errorf("restore left %d bytes of wrong content at the damaged file's place", len(b))
	}

	// The whole version: the damaged file fails loudly, the rest restores.
	dir, r := e.restore(2)
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, victim) {
		t.Errorf("restore of a version with a damaged file: want a non-zero exit naming the file; got %s", r)
	}
	if r.code != 3 {
		t.Errorf("restore with one damaged file: exit %d, want 3 (incomplete)", r.code)
	}
	got := snapshot(t, dir)
	delete(got, victim)
	want := map[string]entryState{}
	for p, s := range snap {
		if p != victim {
			want[p] = s
		}
	}
	// The victim's directory may keep the restore's mtime when a file in it failed.
	delete(want, filepath.Dir(victim))
	delete(got, filepath.Dir(victim))
	compareTrees(t, "restore of the unaffected files", want, got)
	// And every byte and every piece of metadata treediff knows (owner,
	// xattrs, ACLs, flags, holes) of everything but the victim.
	requireSameExcept(t, "restore of the unaffected files", e.src, dir, func(d treediff.Difference) bool {
		return string(d.Path) == victim || string(d.Path) == filepath.Dir(victim) && d.Field == "mtime"
	})
	// An unaffected single file restores with exit 0, whole: bytes and
	// metadata.
	other := "docs/d04/f014.txt"
	to = filepath.Join(e.root, "two")
	if r := e.a.run("restore", "home@2:"+filepath.Join(e.src, other), "-to", to, "-setid"); r.code != 0 {
		t.Errorf("restore of an unaffected file: %s", r)
	} else {
		restored := filepath.Join(to, e.src)
		compareTrees(t, "restore of an unaffected file", map[string]entryState{other: snap[other]},
			map[string]entryState{other: snapshot(t, restored)[other]})
		requireSameExcept(t, "restore of an unaffected file", filepath.Join(e.src, filepath.Dir(other)), filepath.Join(restored, filepath.Dir(other)),
			func(d treediff.Difference) bool { return string(d.Path) != filepath.Base(other) })
	}
}

// requireSameExcept requires the tree at got to match the one at want in
// content and metadata (treediff, atime aside), apart from the differences
// expected says are the test's doing.
func requireSameExcept(t *testing.T, what, want, got string, expected func(treediff.Difference) bool) {
	t.Helper()
	diffs, err := treediff.Compare(want, got, treediff.Options{SkipRoot: true})
	if err != nil {
		t.Fatalf("%s: compare: %v", what, err)
	}
	var bad []string
	for _, d := range diffs {
		if !expected(d) {
			bad = append(bad, d.String())
		}
	}
	if len(bad) > 0 {
		if len(bad) > 30 {
			bad = append(bad[:30], fmt.Sprintf("... and %d more", len(bad)-30))
		}
		t.Errorf("%s: %d differences:\n  %s", what, len(bad), strings.Join(bad, "\n  "))
	}
}

// TestCorruptEntryHeader flips a byte in one entry's header, which stops a
// sequential scan of its pack: verify must still name only the file that
// is really damaged, and every other file must restore.
func TestCorruptEntryHeader(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 7)
	for i := 0; i < 40; i++ {
		g.write(fmt.Sprintf("f%02d.txt", i), g.text(fmt.Sprintf("f%02d", i), 3000), 0o644)
	}
	snap := snapshot(t, e.src)
	e.a.backup("home")
	const victim = "f05.txt"
	content, _ := os.ReadFile(filepath.Join(e.src, victim))
	_, comp := agentClient(t, e.a.state)
	id := [32]byte(keys.NewHasher([32]byte(comp.ChunkKey)).Sum(content))
	loc := findEntry(t, e.v.dir, id)
	flipByte(t, loc.path, loc.offset+20) // inside the id: the header's CRC fails

	r := e.v.ctl("verify")
	if r.code != 3 || !strings.Contains(r.stdout, fmt.Sprintf("offset %d", loc.offset)) {
		t.Fatalf("verify of a damaged entry header: want exit 3 naming offset %d; got %s", loc.offset, r)
	}
	var others []string
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, "file \"") && !strings.Contains(line, victim) {
			others = append(others, line)
		}
	}
	if len(others) > 0 {
		t.Errorf("verify reports %d intact files as damaged (the entries after a bad header are readable by their index offsets):\n%s", len(others), strings.Join(others, "\n"))
	}
	dir, rr := e.restore(1)
	if rr.code != 3 || !strings.Contains(rr.stdout+rr.stderr, victim) {
		t.Errorf("restore: want exit 3 naming %s; got %s", victim, rr)
	}
	got := snapshot(t, dir)
	want := map[string]entryState{}
	for p, s := range snap {
		if p != victim && p != "." {
			want[p] = s
		}
	}
	delete(got, victim)
	delete(got, ".")
	compareTrees(t, "restore of the intact files", want, got)
	requireSameExcept(t, "restore of the intact files", e.src, dir, func(d treediff.Difference) bool {
		return string(d.Path) == victim || string(d.Path) == "."
	})
}

// TestCorruptListing damages a version's listing: verify names the
// version, and restoring it fails loudly instead of restoring a part.
func TestCorruptListing(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 8)
	for i := 0; i < 20; i++ {
		g.write(fmt.Sprintf("f%02d.txt", i), g.text(fmt.Sprintf("f%02d", i), 2000), 0o644)
	}
	e.a.backup("home")
	var loc *entryLoc
	filepath.WalkDir(filepath.Join(e.v.dir, "packs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || !strings.HasSuffix(p, ".pack") {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		sc, err := pack.NewScanner(f)
		if err != nil {
			return err
		}
		for {
			en, err := sc.Next()
			if err != nil {
				return nil
			}
			if en.Header.Kind == pack.KindListing {
				loc = &entryLoc{p, en.Offset, en.Header.BodyLen}
			}
		}
	})
	if loc == nil {
		t.Fatal("no listing entry in the packs")
	}
	flipByte(t, loc.path, loc.offset+pack.EntryHeaderSize+int64(loc.bodyLen)-5)
	r := e.v.ctl("verify")
	if r.code != 3 || !strings.Contains(r.stdout, "home@1") || !strings.Contains(r.stdout, fmt.Sprintf("offset %d", loc.offset)) {
		t.Errorf("verify of a damaged listing: want exit 3 naming home@1 and offset %d; got %s", loc.offset, r)
	}
	dir, rr := e.restore(1)
	if rr.code == 0 || rr.code == 2 || !strings.Contains(rr.stdout+rr.stderr, "damaged") {
		t.Errorf("restore of a version whose listing is damaged: want a failure that says so; got %s", rr)
	}
	if rr.code == 1 {
		if _, err := os.Stat(dir); err == nil {
			t.Logf("note: restore exited 1 but made %s", dir)
		}
	}
}
