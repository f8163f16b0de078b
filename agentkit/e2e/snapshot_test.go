package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/internal/loopfs"
)

// The file the writer keeps rewriting behaves like a crash-safe database:
// a header block says (generation g, count k), then logN records of recSize
// bytes. In generation g the writer overwrites record i with record(g, i),
// syncs it, and only then sets the header to (g, i+1) and syncs; a new
// generation first sets the header to (g+1, 0). So in every state the file
// can be in after a crash (and a filesystem snapshot is such a state),
// records 0..k-1 are record(g, 0..k-1). A plain read that starts before the
// writer moves on and ends after it does not have this property.
const (
	recSize = 64 << 10
	logN    = 32
)

func record(g, i uint64) []byte {
	b := make([]byte, recSize)
	for j := 0; j < recSize; j += 16 {
		binary.LittleEndian.PutUint64(b[j:], g)
		binary.LittleEndian.PutUint64(b[j+8:], i*0x9e3779b97f4a7c15+uint64(j))
	}
	return b
}

// checkLog reports why b is not a state the file can be in after a crash.
func checkLog(b []byte) (gen uint64, err error) {
	if len(b) < 16 {
		return 0, fmt.Errorf("torn: %d bytes, shorter than the header", len(b))
	}
	g, k := binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
	if k > logN {
		return g, fmt.Errorf("torn: header count %d", k)
	}
	if len(b) < int(k+1)*recSize {
		return g, fmt.Errorf("torn: the header says %d records of generation %d, the file has %d bytes", k, g, len(b))
	}
	for i := uint64(0); i < k; i++ {
		if !bytes.Equal(b[(i+1)*recSize:(i+2)*recSize], record(g, i)) {
			return g, fmt.Errorf("torn: the header says generation %d up to record %d, record %d is not of it", g, k, i)
		}
	}
	return g, nil
}

// writeLog rewrites p generation after generation until ctx ends,
// counting the records written in written.
func writeLog(ctx context.Context, p string, written *atomic.Uint64) error {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	hdr := make([]byte, 16)
	setHeader := func(g, k uint64) error {
		binary.LittleEndian.PutUint64(hdr, g)
		binary.LittleEndian.PutUint64(hdr[8:], k)
		if _, err := f.WriteAt(hdr, 0); err != nil {
			return err
		}
		return unix.Fdatasync(int(f.Fd()))
	}
	if _, err := f.WriteAt(make([]byte, recSize), 0); err != nil {
		return err
	}
	for g := uint64(1); ctx.Err() == nil; g++ {
		if err := setHeader(g, 0); err != nil {
			return err
		}
		for i := uint64(0); i < logN && ctx.Err() == nil; i++ {
			if _, err := f.WriteAt(record(g, i), int64(i+1)*recSize); err != nil {
				return err
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				return err
			}
			if err := setHeader(g, i+1); err != nil {
				return err
			}
			written.Add(1)
		}
	}
	return nil
}

// TestSnapshotOpenFile backs up a btrfs subvolume from a snapshot while a
// writer keeps changing a file in it, many times, and requires every
// version to hold a consistent copy of the file, never marked inconsistent.
func TestSnapshotOpenFile(t *testing.T) {
	e := newEnv(t)
	mnt := loopfs.MountBtrfs(t, e.root, 512<<20)
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
		before := written.Load()
		r := e.a.run("backup", "-json", "live")
		if during := written.Load() - before; during == 0 {
			t.Errorf("backup %d: the writer wrote nothing while it ran, so the test proves nothing", i+1)
		} else {
			t.Logf("backup %d: the writer wrote %d records while it ran", i+1, during)
		}
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
		b := e.restoreFile("live", v, logPath)
		n, err := checkLog(b)
		if err != nil {
			t.Errorf("version %d holds an inconsistent copy of the live file: %v", v, err)
		} else {
			t.Logf("version %d: a consistent copy at generation %d (the writer has written %d records)", v, n, written.Load())
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
	// exit 3: committed, incomplete; the live file is never a silent torn
	// copy. A backup may read the file between two writes and exit 0; its
	// copy must then check, and the test backs up again until the agent
	// catches the writer changing the file: without that it proves nothing.
	const attempts = 8
	for i := 1; ; i++ {
		s := e.a.run("backup", "-json", "home")
		if s.code == 0 {
			if _, err := checkLog(e.restoreFile("home", i, logPath)); err != nil {
				t.Fatalf("without a snapshot the agent committed a torn copy as consistent (backup %d): %v", i, err)
			}
			if i == attempts {
				t.Fatalf("%d backups without a snapshot each read the live file unchanged: the writer never tore a plain read, so the test proves nothing", attempts)
			}
			t.Logf("backup %d: the live file happened to be read while unchanged, and the copy checks; again", i)
			continue
		}
		if s.code != 3 || !strings.Contains(s.stdout, "live.log") {
			t.Fatalf("backup %d of a live file without a snapshot: %s", i, s)
		}
		t.Logf("without a snapshot (backup %d): %s", i, strings.TrimSpace(s.stdout))
		return
	}
}

// restoreConfig restores CONFIG@N to a fresh directory and returns where
// root landed.
func (e *env) restoreConfig(config string, version int, root string) (string, result) {
	e.t.Helper()
	to := filepath.Join(e.root, fmt.Sprintf("restore-%s-%d-%d", config, version, time.Now().UnixNano()))
	r := e.a.run("restore", fmt.Sprintf("%s@%d", config, version), "-to", to, "-setid")
	return filepath.Join(to, root), r
}

// restoreFile restores one file of CONFIG@N to a fresh directory and
// returns its content.
func (e *env) restoreFile(config string, version int, path string) []byte {
	e.t.Helper()
	to := filepath.Join(e.root, fmt.Sprintf("file-%s-%d-%d", config, version, time.Now().UnixNano()))
	if r := e.a.run("restore", fmt.Sprintf("%s@%d:%s", config, version, path), "-to", to, "-setid"); r.code != 0 {
		e.t.Fatalf("restore %s@%d:%s: %s", config, version, path, r)
	}
	b, err := os.ReadFile(filepath.Join(to, path))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// TestSnapshotAfterCrash kills the agent while it reads from a snapshot;
// the snapshot stays, and the next backup of the configuration deletes it
// and commits a complete version.
func TestSnapshotAfterCrash(t *testing.T) {
	e := newEnv(t)
	mnt := loopfs.MountBtrfs(t, e.root, 512<<20)
	sub := filepath.Join(mnt, "data")
	if out, err := exec.Command("btrfs", "subvolume", "create", sub).CombinedOutput(); err != nil {
		t.Fatalf("btrfs subvolume create: %v\n%s", err, out)
	}
	gen := newGen(t, filepath.Join(sub, "tree"), 9)
	gen.makeTree(200, 200<<20) // big enough that the agent is still reading when killed
	e.a.must("config", "set", "live", "-path", sub, "-snapshot", "btrfs")

	snaps := func() []string {
		var out []string
		ents, _ := os.ReadDir(sub)
		for _, de := range ents {
			if strings.HasPrefix(de.Name(), ".vaultnode-snapshot.live.") {
				out = append(out, de.Name())
			}
		}
		return out
	}
	cmd := exec.Command(filepath.Join(binDir, "vault-agent"), "-state", e.a.state, "backup", "live")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for len(snaps()) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cmd.Process.Kill()
	err := cmd.Wait()
	left := snaps()
	if len(left) == 0 {
		t.Fatalf("no snapshot seen while the agent ran (it ended with %v)", err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("the agent finished before the kill (%v): the test proves nothing; make the tree bigger", err)
	}
	t.Logf("left by the killed agent: %v", left)

	s := e.a.backup("live")
	if s.Version == 0 {
		t.Fatalf("backup after the crash: %+v", s)
	}
	if after := snaps(); len(after) != 0 {
		t.Errorf("snapshots left after the next backup: %v", after)
	}
	if out, err := exec.Command("btrfs", "subvolume", "list", mnt).CombinedOutput(); err != nil || strings.Contains(string(out), ".vaultnode-snapshot") {
		t.Errorf("btrfs subvolume list after the next backup (%v):\n%s", err, out)
	}
}
