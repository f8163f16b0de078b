package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/client"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// A local user can make a directory tree deeper than the listing's path
// limit (tree.MaxPathLen); the vault refuses a listing holding such a
// path. The backup must still commit, leave out what lies too deep, and
// say so; the rest restores.
func TestBackupPathOverLimit(t *testing.T) {
	e := newEnv(t)
	if err := os.WriteFile(filepath.Join(e.src, "kept.txt"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	// 255-byte names, one below the other, through directory handles
	// (the whole path is far over PATH_MAX).
	name := strings.Repeat("d", 255)
	fd, err := unix.Open(e.src, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	depth := 0
	for rel := len(e.src); rel <= tree.MaxPathLen+1024; rel += len(name) + 1 {
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, name, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
		depth++
	}
	deep, err := unix.Openat(fd, "deep.txt", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(deep, []byte("too deep"))
	unix.Close(deep)
	unix.Close(fd)

	r := e.a.run("backup", "-json", "home")
	var s summary
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &s); err != nil {
		t.Fatalf("backup of a tree %d directories deep: %s", depth, r)
	}
	if s.Version != 1 {
		t.Fatalf("backup of a tree %d directories deep committed version %d: %s", depth, s.Version, r)
	}
	found := false
	for _, p := range s.Problems {
		found = found || strings.Contains(p, "tree.MaxPathLen")
	}
	if !found {
		t.Fatalf("the backup does not report the path over tree.MaxPathLen: %v", s.Problems)
	}
	got, rr := e.restore(1)
	if rr.code != 0 {
		t.Logf("restore: %s", rr)
	}
	if b, err := os.ReadFile(filepath.Join(got, "kept.txt")); err != nil || string(b) != "kept" {
		t.Fatalf("kept.txt restored as %q, %v", b, err)
	}
}

// peakRSS is a process's peak resident memory (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// The memory-exhaustion commit of issue 10 against the real vaultd: a
// first listing chunk declaring a huge string, then one zero chunk
// referenced thousands of times (at 1.8 KB uploaded it took vaultd from
// 21 MB to 817 MB); and its variants, a node that never ends and deep
// nesting. Each is refused with over_limit naming the limit, vaultd's peak
// memory stays far under its 256 MB bound, and a real backup still works.
func TestMemoryExhaustionCommit(t *testing.T) {
	e := newEnv(t)
	if err := os.WriteFile(filepath.Join(e.src, "a.txt"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.a.backup("home")
	ctx := context.Background()
	c, comp := agentClient(t, e.a.state)
	hs := keys.NewHasher([32]byte(comp.ChunkKey))
	s, err := c.Open(ctx, "home")
	if err != nil {
		t.Fatal(err)
	}
	put := func(plain []byte) tree.ChunkRef {
		t.Helper()
		id := [32]byte(hs.Sum(plain))
		if err := c.Upload(ctx, s.ID, bytes.NewReader(frame(wire.FrameListing, id, plain))); err != nil {
			t.Fatal(err)
		}
		return tree.ChunkRef{ID: id, Len: uint32(len(plain))}
	}
	magic, _ := tree.Marshal(tree.ListingMagic)
	hugePath := put(append(append([]byte{}, magic...), 0xa1, 0x01, 0x5b, 0, 0, 0, 1, 0, 0, 0, 0))
	zero8 := put(make([]byte, wire.MaxPlain))
	zero4 := put(make([]byte, tree.MaxListingChunk))
	var strs bytes.Buffer // 64 KiB byte strings, back to back
	for strs.Len() < tree.MaxListingChunk-70000 {
		strs.Write([]byte{0x59, 0xff, 0xff})
		strs.Write(make([]byte, 0xffff))
	}
	strings4 := put(strs.Bytes())
	endless := put(append(append([]byte{}, magic...), 0xa1, 0x17, 0x9a, 0x00, 0x08, 0x00, 0x00))
	deep := put(append(append([]byte{}, magic...), bytes.Repeat([]byte{0x81}, 1<<20)...))
	repeat := func(first, then tree.ChunkRef, n int) []tree.ChunkRef {
		refs := []tree.ChunkRef{first}
		for range n {
			refs = append(refs, then)
		}
		return refs
	}
	before := peakRSS(t, e.v.cmd.Process.Pid)
	for _, tt := range []struct {
		name, limit string
		refs        []tree.ChunkRef
	}{
		{"issue 10: 7,000 references of an 8 MiB zero chunk", "tree.MaxListingChunk", repeat(hugePath, zero8, 7000)},
		{"4 GiB path, then 16 GiB of zeros", "tree.MaxPathLen", repeat(hugePath, zero4, tree.MaxListingBytes/tree.MaxListingChunk-1)},
		{"a node that never ends", "tree.MaxNodeBytes", repeat(endless, strings4, 1000)},
		{"deep nesting", "tree.MaxNodeDepth", []tree.ChunkRef{deep}},
	} {
		_, err := c.Commit(ctx, s.ID, wire.Commit{Listing: tt.refs})
		var ce *client.Error
		if !client.IsCode(err, wire.CodeLimit) || !strings.Contains(err.Error(), tt.limit) {
			t.Fatalf("%s: err = %v, want %s naming %s", tt.name, err, wire.CodeLimit, tt.limit)
		}
		if e, ok := err.(*client.Error); ok {
			ce = e
		}
		t.Logf("%s: %d %s", tt.name, ce.Status, ce.Message)
	}
	after := peakRSS(t, e.v.cmd.Process.Pid)
	t.Logf("vaultd peak RSS %d MB before the hostile commits, %d MB after", before>>20, after>>20)
	if after > 256<<20 {
		t.Errorf("vaultd peaked at %d MB, over its 256 MB bound", after>>20)
	}
	if err := c.Abort(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if s := e.a.backup("home"); s.Version != 2 {
		t.Fatalf("backup after the hostile commits committed version %d", s.Version)
	}
}
