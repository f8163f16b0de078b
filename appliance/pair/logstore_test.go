package pair

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

var testHCLog = hclog.NewNullLogger()

func testLogs(from, to uint64, size int) []*raft.Log {
	at := time.Unix(1700000000, 5)
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		d := bytes.Repeat([]byte{byte(i)}, size)
		logs = append(logs, &raft.Log{Index: i, Term: 2 + i/100, Type: raft.LogCommand, Data: d, Extensions: []byte("x"), AppendedAt: at})
	}
	return logs
}

func sameLog(t *testing.T, want *raft.Log, got raft.Log) {
	t.Helper()
	if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) ||
		!bytes.Equal(got.Extensions, want.Extensions) || !got.AppendedAt.Equal(want.AppendedAt) {
		t.Fatalf("entry %d reads back as %+v, stored %+v", want.Index, got, *want)
	}
}

// TestLogStore: entries round-trip, the head deletes as raft compacts, a
// reopened store keeps what it was told, and raft sees its state.
func TestLogStore(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenLogStore(dir, testHCLog)
	if err != nil {
		t.Fatal(err)
	}
	if HasLogStore(t.TempDir()) || !HasLogStore(dir) {
		t.Fatal("HasLogStore does not tell an empty directory from one with a log")
	}
	logs := testLogs(1, 10, 3)
	if err := s.StoreLogs(logs[:4]); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(logs[4:]); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = OpenLogStore(dir, testHCLog); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if first != 4 || last != 10 {
		t.Fatalf("first %d last %d, want 4 and 10", first, last)
	}
	var got raft.Log
	if err := s.GetLog(5, &got); err != nil {
		t.Fatal(err)
	}
	sameLog(t, logs[4], got)
	if err := s.GetLog(2, &got); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("deleted entry: %v", err)
	}
	if err := s.DeleteRange(4, 6); err != nil {
		t.Fatal(err)
	}
	if err := s.GetLog(5, &got); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("entry deleted from the open tail segment: %v", err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("term %d %v", v, err)
	}
	if ok, err := raft.HasExistingState(s, s, noSnapshots{}); err != nil || !ok {
		t.Fatalf("raft sees no state: %v", err)
	}
	if err := s.StoreLogs(testLogs(12, 12, 1)); err == nil {
		t.Fatal("a gap in the log was stored")
	}
	big := &raft.Log{Index: 11, Data: make([]byte, MaxLogData+1)}
	if err := s.StoreLog(big); err == nil {
		t.Fatal("an entry over MaxLogData was stored")
	}
}

// walSegment is the one segment file of the WAL in dir.
func walSegment(t *testing.T, dir string) string {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, LogDir, "*.wal"))
	if len(segs) != 1 {
		t.Fatalf("segments %v, want one", segs)
	}
	return segs[0]
}

// TestLogStoreDamagedSegment damages a real segment file as a crash or a
// bad disk would, and shows what raft-wal and our codec make of it.
func TestLogStoreDamagedSegment(t *testing.T) {
	// Batches of 5 entries; the last batch is 16-20.
	write := func(t *testing.T) (string, []*raft.Log) {
		dir := t.TempDir()
		s, err := OpenLogStore(dir, testHCLog)
		if err != nil {
			t.Fatal(err)
		}
		logs := testLogs(1, 20, 100)
		for i := 0; i < 20; i += 5 {
			if err := s.StoreLogs(logs[i : i+5]); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		return dir, logs
	}
	reopen := func(t *testing.T, dir string) (*LogStore, uint64) {
		s, err := OpenLogStore(dir, testHCLog)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		last, _ := s.LastIndex()
		return s, last
	}
	// offset of entry idx's frame: each frame is an 8-byte header and the
	// record padded to 8 bytes, after the 32-byte file header; a commit
	// frame (8 bytes) after each batch.
	frame := func(t *testing.T, seg string, idx uint64) int64 {
		b, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		off := int64(32)
		for i := uint64(1); ; i++ {
			n := int64(binary.LittleEndian.Uint32(b[off+4:]))
			if b[off] != 1 {
				t.Fatalf("frame at %d is of type %d, want an entry", off, b[off])
			}
			if i == idx {
				return off
			}
			off += 8 + (n+7)/8*8
			if i%5 == 0 {
				off += 8 // the batch's commit frame
			}
		}
	}
	t.Run("torn tail", func(t *testing.T) {
		// A crash during the last append: its fsync never returned, so
		// raft was never told 16-20 are stored; they are dropped.
		dir, logs := write(t)
		seg := walSegment(t, dir)
		if err := os.Truncate(seg, frame(t, seg, 18)+20); err != nil {
			t.Fatal(err)
		}
		s, last := reopen(t, dir)
		if last != 15 {
			t.Fatalf("last index %d after a torn last batch, want 15", last)
		}
		var got raft.Log
		if err := s.GetLog(15, &got); err != nil {
			t.Fatal(err)
		}
		sameLog(t, logs[14], got)
		if err := s.StoreLogs(logs[15:]); err != nil {
			t.Fatalf("append after the recovered tail: %v", err)
		}
	})
	t.Run("garbled last batch", func(t *testing.T) {
		// The last batch's sectors garbled (its CRC fails): dropped too.
		dir, _ := write(t)
		seg := walSegment(t, dir)
		f, err := os.OpenFile(seg, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte{0xaa}, frame(t, seg, 17)+30)
		f.Close()
		if _, last := reopen(t, dir); last != 15 {
			t.Fatalf("last index %d, want 15", last)
		}
	})
	t.Run("hostile record", func(t *testing.T) {
		// A record whose first varint never ends: raft-wal's decoder
		// would slice by it and panic; GetLog says ErrBadLog.
		dir, logs := write(t)
		seg := walSegment(t, dir)
		f, _ := os.OpenFile(seg, os.O_RDWR, 0)
		f.WriteAt(bytes.Repeat([]byte{0xff}, 11), frame(t, seg, 7)+8)
		f.Close()
		s, last := reopen(t, dir)
		if last != 20 {
			t.Fatalf("last index %d, want 20", last)
		}
		var got raft.Log
		if err := s.GetLog(7, &got); !errors.Is(err, ErrBadLog) {
			t.Fatalf("damaged entry 7: %v", err)
		}
		if err := s.GetLog(8, &got); err != nil {
			t.Fatal(err)
		}
		sameLog(t, logs[7], got)
	})
	t.Run("flipped byte in an older entry", func(t *testing.T) {
		// Bit rot in a batch synced long ago: raft-wal checks only the
		// last batch's CRC, when it recovers the tail (its README: latent
		// corruption is the disk's and file system's to catch; the bbolt
		// store before it had no checksum either). The entry reads back
		// changed.
		dir, logs := write(t)
		seg := walSegment(t, dir)
		f, _ := os.OpenFile(seg, os.O_RDWR, 0)
		f.WriteAt([]byte{0xaa}, frame(t, seg, 7)+40)
		f.Close()
		s, _ := reopen(t, dir)
		var got raft.Log
		if err := s.GetLog(7, &got); err != nil || bytes.Equal(got.Data, logs[6].Data) {
			t.Fatalf("entry 7 read back unchanged or failed: %v", err)
		}
	})
	t.Run("flipped frame header in an older batch", func(t *testing.T) {
		// raft-wal takes a frame header it cannot read for the end of a
		// torn write: the log ends before it, silently (its README:
		// latent corruption is the disk's and file system's to catch).
		dir, _ := write(t)
		seg := walSegment(t, dir)
		f, _ := os.OpenFile(seg, os.O_RDWR, 0)
		f.WriteAt([]byte{0x7f}, frame(t, seg, 7))
		f.Close()
		if _, last := reopen(t, dir); last != 5 {
			t.Fatalf("last index %d, want 5 (entries up to the last whole batch)", last)
		}
	})
}

// writeLegacy writes a raft.db as the bbolt log store before raft-wal did.
func writeLegacy(t testing.TB, path string, logs []*raft.Log, stable map[string][]byte) {
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		lb, _ := tx.CreateBucketIfNotExists(bucketLogs)
		sb, _ := tx.CreateBucketIfNotExists(bucketStable)
		for _, l := range logs {
			b := binary.BigEndian.AppendUint64(nil, l.Index)
			b = binary.BigEndian.AppendUint64(b, l.Term)
			b = append(b, byte(l.Type))
			b = binary.BigEndian.AppendUint64(b, uint64(l.AppendedAt.UnixNano()))
			b = binary.BigEndian.AppendUint32(b, uint32(len(l.Data)))
			b = append(b, l.Data...)
			b = binary.BigEndian.AppendUint32(b, uint32(len(l.Extensions)))
			b = append(b, l.Extensions...)
			if err := lb.Put(binary.BigEndian.AppendUint64(nil, l.Index), b); err != nil {
				return err
			}
		}
		for k, v := range stable {
			if err := sb.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func legacyStable() map[string][]byte {
	return map[string][]byte{"CurrentTerm": binary.BigEndian.AppendUint64(nil, 41), "LastVoteTerm": binary.BigEndian.AppendUint64(nil, 40),
		"LastVoteCand": []byte("vault-b")}
}

// checkMigrated opens dir's log (migrating what is left to migrate) and
// checks it holds exactly logs and legacyStable, and raft.db is gone.
func checkMigrated(t *testing.T, dir string, logs []*raft.Log) {
	t.Helper()
	s, err := OpenLogStore(dir, testHCLog)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if first != logs[0].Index || last != logs[len(logs)-1].Index {
		t.Fatalf("log %d-%d, want %d-%d", first, last, logs[0].Index, logs[len(logs)-1].Index)
	}
	var got raft.Log
	for _, l := range logs {
		if err := s.GetLog(l.Index, &got); err != nil {
			t.Fatal(err)
		}
		sameLog(t, l, got)
	}
	for k, n := range map[string]uint64{"CurrentTerm": 41, "LastVoteTerm": 40} {
		if v, err := s.GetUint64([]byte(k)); err != nil || v != n {
			t.Fatalf("%s %d %v, want %d", k, v, err, n)
		}
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "vault-b" {
		t.Fatalf("vote %q %v", v, err)
	}
	for _, f := range []string{LegacyLogFile, LogDir + ".tmp"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s is still there after the migration: %v", f, err)
		}
	}
}

// TestMigrateLegacy: a raft.db with a compacted head moves into the WAL
// whole, and raft finds its state there.
func TestMigrateLegacy(t *testing.T) {
	dir := t.TempDir()
	logs := testLogs(100, 1300, 200)
	writeLegacy(t, filepath.Join(dir, LegacyLogFile), logs, legacyStable())
	checkMigrated(t, dir, logs)
	checkMigrated(t, dir, logs) // a second start finds nothing to move
}

const envMigrateDir = "VAULTNODE_TEST_MIGRATE_DIR"

// TestMigrateKilled kills a real process (this test binary, re-run) at
// random instants of the migration; each time the next open finishes it
// with nothing lost. VAULTNODE_TEST_MIGRATE_KILLS sets the rounds (soak).
func TestMigrateKilled(t *testing.T) {
	if dir := os.Getenv(envMigrateDir); dir != "" {
		// The child: migrate and exit.
		s, err := OpenLogStore(dir, testHCLog)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		s.Close()
		os.Exit(0)
	}
	rounds := 12
	if v := os.Getenv("VAULTNODE_TEST_MIGRATE_KILLS"); v != "" {
		rounds, _ = strconv.Atoi(v)
	}
	logs := testLogs(1, 3000, 1000)
	template := filepath.Join(t.TempDir(), LegacyLogFile)
	writeLegacy(t, template, logs, legacyStable())
	raw, err := os.ReadFile(template)
	if err != nil {
		t.Fatal(err)
	}
	run := func(dir string, killAfter time.Duration) (time.Duration, bool) {
		if err := os.WriteFile(filepath.Join(dir, LegacyLogFile), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestMigrateKilled$")
		cmd.Env = append(os.Environ(), envMigrateDir+"="+dir)
		cmd.Stderr = os.Stderr
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var kill <-chan time.Time
		if killAfter > 0 {
			kill = time.After(killAfter)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("migration: %v", err)
			}
			return time.Since(start), false
		case <-kill:
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
			return 0, true
		}
	}
	whole, _ := run(t.TempDir(), 0)
	t.Logf("a whole migration of %d entries takes %v", len(logs), whole)
	seen := map[string]int{}
	for i := 0; i < rounds; i++ {
		dir := t.TempDir()
		if _, killed := run(dir, time.Duration(rand.Int64N(int64(whole*3/4)))+1); !killed {
			seen["finished"]++
		} else {
			state := ""
			for _, f := range []string{LegacyLogFile, LogDir + ".tmp", LogDir} {
				if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
					state += f + " "
				}
			}
			seen[state]++
		}
		checkMigrated(t, dir, logs)
	}
	t.Logf("what each kill left: %v", seen)
}
