package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"vaultnode/internal/wire"
)

// TestBrowse: one level, sorted, with types and sizes; symlinks listed,
// not followed; paths outside the allowed directories refused; a level
// over the bound truncated; the roots hold "/" and only allowed ones.
func TestBrowse(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "b.txt"), []byte("hello"), 0o644)
	os.Mkdir(filepath.Join(dir, "a"), 0o755)
	os.Symlink("/etc", filepath.Join(dir, "link"))
	res, err := Browse(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range res.Entries {
		got = append(got, fmt.Sprintf("%s %s %d", e.Name, e.Type, e.Size))
	}
	if want := []string{"a dir 0", "b.txt file 5", "link symlink 4"}; !slices.Equal(got, want) {
		t.Errorf("browse: %v, want %v", got, want)
	}
	if _, err := Browse(filepath.Join(dir, "link"), []string{dir}); err == nil {
		t.Error("a symlink to a directory outside was followed") // /etc is outside dir
	}
	if _, err := Browse("/etc", []string{dir}); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("browse outside the allowed directories: %v", err)
	}
	if _, err := Browse(dir+"/../x", nil); err == nil {
		t.Error("an unclean path was browsed")
	}
	many := filepath.Join(dir, "a")
	for i := 0; i < wire.MaxBrowseEntries+5; i++ {
		os.WriteFile(filepath.Join(many, fmt.Sprintf("f%05d", i)), nil, 0o644)
	}
	res, err = Browse(many, []string{dir})
	if err != nil || len(res.Entries) != wire.MaxBrowseEntries || !res.Truncated {
		t.Errorf("a level over the bound: %d entries, truncated %v, %v", len(res.Entries), res.Truncated, err)
	}
	roots, err := Browse("", []string{dir})
	if err != nil || len(roots.Entries) == 0 || roots.Entries[0].Name != dir {
		t.Fatalf("roots within %s: %+v %v", dir, roots, err)
	}
	for _, e := range roots.Entries {
		if !allowedPath(e.Name, []string{dir}) {
			t.Errorf("a root outside the allowed directories: %s", e.Name)
		}
	}
	roots, _ = Browse("", nil)
	if !slices.ContainsFunc(roots.Entries, func(e wire.BrowseEntry) bool { return e.Name == "/" && e.Mount != "" }) {
		t.Errorf("the roots lack / with its filesystem: %+v", roots.Entries)
	}
}

// TestFitResult: a result over wire.MaxCommandResult is trimmed to fit and
// marked truncated.
func TestFitResult(t *testing.T) {
	long := string(make([]byte, 3000))
	c := &wire.CompareResult{}
	for i := 0; i < wire.MaxCompareEntries; i++ {
		c.Added = append(c.Added, long)
	}
	res := wire.CommandResult{State: wire.CmdDone, Compare: c}
	fitResult(&res)
	b, _ := jsonMarshal(res)
	if len(b) > wire.MaxCommandResult || !c.Truncated || len(c.Added) == 0 {
		t.Errorf("fitted result: %d bytes, truncated %v, %d entries", len(b), c.Truncated, len(c.Added))
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
