package backup

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vaultnode/agentkit/state"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// versionVault answers Versions and GetChunks from memory.
type versionVault struct {
	versions []wire.Manifest
	chunks   map[[32]byte][]byte
}

func (v *versionVault) Versions(context.Context, string) ([]wire.Manifest, error) {
	return v.versions, nil
}

func (v *versionVault) GetChunks(_ context.Context, ids [][32]byte, fn func(f *wire.Frame) error) error {
	for _, id := range ids {
		f := &wire.Frame{ID: id, Kind: wire.StatusMissing}
		if b, ok := v.chunks[id]; ok {
			f = &wire.Frame{ID: id, Kind: wire.StatusOK, PlainLen: uint32(len(b)), Payload: b}
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// TestFetchListing: the newest version's listing becomes the cache, byte
// for byte, with its number and start; a damaged chunk, a version without
// its start or no version at all leave no cache.
func TestFetchListing(t *testing.T) {
	key := [32]byte{9}
	h := keys.NewHasher(key)
	var listing bytes.Buffer
	tw, err := tree.NewWriter(&listing)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "a/b", "a/c"} {
		if err := tw.Write(&tree.Node{Path: []byte(p), Type: tree.TypeDir}); err != nil {
			t.Fatal(err)
		}
	}
	half := listing.Len() / 2
	parts := [][]byte{listing.Bytes()[:half], listing.Bytes()[half:]}
	v := &versionVault{chunks: map[[32]byte][]byte{}}
	var refs []tree.ChunkRef
	for _, p := range parts {
		id := h.Sum(p)
		v.chunks[id] = p
		refs = append(refs, tree.ChunkRef{ID: id, Len: uint32(len(p))})
	}
	started := time.Date(2026, 12, 5, 10, 0, 0, 123, time.UTC)
	v.versions = []wire.Manifest{{Seq: 1, Started: started.Add(-time.Hour), Listing: refs[:1]}, {Seq: 2, Started: started, Listing: refs}}

	st, cdir := stateFor(t, "home")
	last, err := fetchListing(context.Background(), v, st, "home", cdir, key)
	if err != nil {
		t.Fatal(err)
	}
	path, kept := st.LastListing("home")
	if last.Seq != 2 || kept.Seq != 2 || !kept.Started.Equal(started) {
		t.Errorf("kept version %d started %v (returned %d); want 2, %v", kept.Seq, kept.Started, last.Seq, started)
	}
	tr, closeCache, err := openCacheFile(path)
	if err != nil || tr == nil {
		t.Fatalf("open the fetched cache: %v", err)
	}
	var got []string
	for {
		n, err := tr.Next()
		if err != nil {
			if err != io.EOF {
				t.Errorf("read the fetched cache: %v", err)
			}
			break
		}
		got = append(got, string(n.Path))
	}
	closeCache()
	if strings.Join(got, " ") != "a a/b a/c" {
		t.Errorf("the fetched cache holds %q", got)
	}

	for _, tc := range []struct {
		name   string
		mangle func(v *versionVault)
		want   string
	}{
		{"a damaged chunk", func(v *versionVault) { v.chunks[refs[1].ID] = append([]byte{parts[1][0] ^ 1}, parts[1][1:]...) }, "damaged"},
		{"a missing chunk", func(v *versionVault) { delete(v.chunks, refs[0].ID) }, "missing"},
		{"no start", func(v *versionVault) { v.versions[1].Started = time.Time{} }, "does not say when it started"},
		{"no version", func(v *versionVault) { v.versions = nil }, errNoVersion.Error()},
	} {
		st, cdir := stateFor(t, "home")
		bad := &versionVault{versions: append([]wire.Manifest(nil), v.versions...), chunks: map[[32]byte][]byte{}}
		for id, b := range v.chunks {
			bad.chunks[id] = b
		}
		tc.mangle(bad)
		_, err := fetchListing(context.Background(), bad, st, "home", cdir, key)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
		if tc.name == "no version" && !errors.Is(err, errNoVersion) {
			t.Errorf("no version: %v is not errNoVersion", err)
		}
		if p, _ := st.LastListing("home"); p != "" {
			t.Errorf("%s: a cache was kept", tc.name)
		}
		if left, _ := filepath.Glob(filepath.Join(cdir, "*")); len(left) != 0 {
			t.Errorf("%s: left %v behind", tc.name, left)
		}
	}
}

// stateFor returns a fresh agent state directory and the cache directory
// of configuration config in it.
func stateFor(t *testing.T, config string) (*state.Dir, string) {
	t.Helper()
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cdir, err := st.ConfigDir(config)
	if err != nil {
		t.Fatal(err)
	}
	return st, cdir
}
