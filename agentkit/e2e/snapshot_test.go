package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// mountBtrfs makes a btrfs filesystem on a sparse file and loop-mounts it
// in a temporary directory (root; btrfs-progs, installed by .ci/run).
func mountBtrfs(t *testing.T, dir string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: mounting a btrfs loop filesystem needs root (CI runs as root)")
	}
	img := filepath.Join(dir, "btrfs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(512 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("mkfs.btrfs", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.btrfs (install btrfs-progs): %v\n%s", err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}

// The log file the writer keeps appending to: a header block holding the
// number of records, then records of recSize bytes, each holding its
// index, the chained hash of all records before it and filler. The writer
// appends a record, then rewrites the header. At any instant the file is
// consistent: records == header or header+1, and the chain verifies. A
// copy read while the writer runs (without a snapshot) sees a header
// older than the records that follow.
const recSize = 64 << 10

func record(i uint64, prev [32]byte) []byte {
	b := make([]byte, recSize)
	binary.LittleEndian.PutUint64(b, i)
	copy(b[8:], prev[:])
	for j := 40; j < recSize; j += 8 {
		binary.LittleEndian.PutUint64(b[j:], i*0x9e3779b97f4a7c15+uint64(j))
	}
	return b
}

// checkLog reports why b is not a consistent state of the log.
func checkLog(b []byte) (records uint64, err error) {
	if len(b) < recSize || len(b)%recSize != 0 {
		return 0, fmt.Errorf("size %d is not a whole number of %d-byte blocks", len(b), recSize)
	}
	hdr := binary.LittleEndian.Uint64(b)
	n := uint64(len(b)/recSize) - 1
	if n != hdr && n != hdr+1 {
		return n, fmt.Errorf("torn: the header says %d records, the file holds %d", hdr, n)
	}
	var prev [32]byte
	for i := uint64(0); i < n; i++ {
		r := b[(i+1)*recSize : (i+2)*recSize]
		if !bytes.Equal(r, record(i, prev)) {
			return n, fmt.Errorf("torn: record %d differs from what the writer wrote", i)
		}
		prev = sha256.Sum256(r)
	}
	return n, nil
}

// writeLog appends records to p until ctx ends, counting them in written.
// Every 64 records it starts a new log beside p and renames it over p, so
// the file stays a few MiB and every instant is still consistent.
func writeLog(ctx context.Context, p string, written *atomic.Uint64) error {
	for ctx.Err() == nil {
		if err := writeLogFile(ctx, p, written); err != nil {
			return err
		}
	}
	return nil
}

func writeLogFile(ctx context.Context, p string, written *atomic.Uint64) error {
	tmp := p + ".new"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	hdr := make([]byte, recSize)
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		return err
	}
	var prev [32]byte
	for i := uint64(0); i < 64 && ctx.Err() == nil; i++ {
		r := record(i, prev)
		if _, err := f.WriteAt(r, int64(i+1)*recSize); err != nil {
			return err
		}
		prev = sha256.Sum256(r)
		binary.LittleEndian.PutUint64(hdr, i+1)
		if _, err := f.WriteAt(hdr[:8], 0); err != nil {
			return err
		}
		written.Add(1)
	}
	return nil
}

// TestSnapshotOpenFile backs up a btrfs subvolume from a snapshot while a
// writer keeps changing a file in it, many times, and requires every
// version to hold a consistent copy of the file, never marked inconsistent.
func TestSnapshotOpenFile(t *testing.T) {
	e := newEnv(t)
	mnt := mountBtrfs(t, e.root)
	sub := filepath.Join(mnt, "data")
	if out, err := exec.Command("btrfs", "subvolume", "create", sub).CombinedOutput(); err != nil {
		t.Fatalf("btrfs subvolume create: %v\n%s", err, out)
	}
	gen := newGen(t, filepath.Join(sub, "tree"), 7)
	gen.makeTree(50, 1<<20)
	e.a.must("config", "set", "live", "-path", sub, "-snapshot", "btrfs")
	if out := e.a.must("config", "list"); !strings.Contains(out, "btrfs snapshot") {
		t.Errorf("config list does not show the snapshot:\n%s", out)
	}

	logPath := filepath.Join(sub, "app/live.log")
	os.MkdirAll(filepath.Dir(logPath), 0o755)
	ctx, cancel := context.WithCancel(context.Background())
	var written atomic.Uint64
	werr := make(chan error, 1)
	go func() { werr <- writeLog(ctx, logPath, &written) }() // owner: this test, stopped by cancel
	defer func() {
		cancel()
		if err := <-werr; err != nil {
			t.Errorf("writer: %v", err)
		}
	}()
	deadline := time.Now().Add(time.Minute)
	for written.Load() < 10 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if written.Load() < 10 {
		t.Fatal("the writer did not start within a minute")
	}

	const runs = 3
	for i := 0; i < runs; i++ {
		r := e.a.run("backup", "-json", "live")
		if r.code != 0 {
			t.Fatalf("backup from a snapshot: %s", r)
		}
		if !strings.Contains(r.stdout, `"inconsistent":0`) || !strings.Contains(r.stdout, `"problems":[]`) {
			t.Errorf("backup %d from a snapshot reported problems: %s", i+1, r.stdout)
		}
	}
	out := e.a.must("versions", "live")
	if strings.Contains(out, "incomplete") {
		t.Errorf("a version is incomplete:\n%s", out)
	}
	listing := e.a.must("ls", "live@latest")
	if strings.Contains(listing, ".vaultnode-snapshot") {
		t.Errorf("the version records the snapshot directory:\n%s", listing)
	}
	for v := 1; v <= runs; v++ {
		spec := fmt.Sprintf("live@%d:%s", v, logPath)
		r := e.a.run("dump", spec)
		if r.code != 0 {
			t.Fatalf("dump %s: %s", spec, r)
		}
		n, err := checkLog([]byte(r.stdout))
		if err != nil {
			t.Errorf("version %d holds an inconsistent copy of the live file: %v", v, err)
		} else {
			t.Logf("version %d: a consistent copy with %d records (the writer was at %d)", v, n, written.Load())
		}
	}
	// The rest of the tree restores exactly, and no snapshot is left.
	dir, r := e.restoreConfig("live", runs, sub)
	if r.code != 0 {
		t.Fatalf("restore: %s", r)
	}
	compareTrees(t, "restore of the tree read from a snapshot", snapshot(t, filepath.Join(sub, "tree")), snapshot(t, filepath.Join(dir, "tree")))
	ents, _ := os.ReadDir(sub)
	for _, de := range ents {
		if strings.HasPrefix(de.Name(), ".vaultnode-snapshot") {
			t.Errorf("snapshot %s left after the backups", de.Name())
		}
	}
}

// Without a snapshot the same writer gives copies the agent detects as
// changing; this shows the writer really tears plain reads. It also checks
// that asking for a snapshot on ext4 is a clear error.
func TestSnapshotNeededAndRefusedElsewhere(t *testing.T) {
	e := newEnv(t)
	e.a.must("config", "set", "nosnap", "-path", e.src, "-snapshot", "btrfs")
	r := e.a.run("backup", "nosnap")
	if r.code == 0 || !strings.Contains(r.stderr, "only btrfs snapshots are supported") {
		t.Errorf("a snapshot on a non-btrfs filesystem: want a clear error, got %s", r)
	}
	if out := e.a.must("versions", "nosnap"); strings.Contains(out, "nosnap@") {
		t.Errorf("a version was committed without the snapshot:\n%s", out)
	}

	logPath := filepath.Join(e.src, "live.log")
	ctx, cancel := context.WithCancel(context.Background())
	var written atomic.Uint64
	werr := make(chan error, 1)
	go func() { werr <- writeLog(ctx, logPath, &written) }()
	defer func() {
		cancel()
		if err := <-werr; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("writer: %v", err)
		}
	}()
	for written.Load() < 10 {
		time.Sleep(time.Millisecond)
	}
	s := e.a.run("backup", "-json", "home")
	// exit 3: committed, incomplete; the live file is never a silent torn copy
	if s.code == 0 {
		t.Logf("without a snapshot the live file happened to be read consistently: %s", s.stdout)
		return
	}
	if s.code != 3 || !strings.Contains(s.stdout, "live.log") {
		t.Fatalf("backup of a live file without a snapshot: %s", s)
	}
	t.Logf("without a snapshot: %s", strings.TrimSpace(s.stdout))
}

// restoreConfig restores CONFIG@N to a fresh directory and returns where
// root landed.
func (e *env) restoreConfig(config string, version int, root string) (string, result) {
	e.t.Helper()
	to := filepath.Join(e.root, fmt.Sprintf("restore-%s-%d-%d", config, version, time.Now().UnixNano()))
	r := e.a.run("restore", fmt.Sprintf("%s@%d", config, version), "-to", to)
	return filepath.Join(to, root), r
}
