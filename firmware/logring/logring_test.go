package logring

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRingKeepsLastLinesAndAttaches(t *testing.T) {
	r := New(3)
	for _, l := range []string{"a\n", "b\n", "c\n", "d\n"} {
		r.Write([]byte(l))
	}
	if diff := cmp.Diff([]string{"b\n", "c\n", "d\n"}, r.Lines()); diff != "" {
		t.Fatal(diff)
	}
	path := filepath.Join(t.TempDir(), "log", "firmware.log")
	if err := r.Attach(path); err != nil {
		t.Fatal(err)
	}
	r.Write([]byte("e\n"))
	r.Detach()
	r.Write([]byte("f\n"))
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "b\nc\nd\ne\n"; string(got) != want {
		t.Fatalf("file %q, want %q", got, want)
	}
	if !strings.HasPrefix(r.Lines()[2], "f") {
		t.Fatalf("ring %q", r.Lines())
	}
}
