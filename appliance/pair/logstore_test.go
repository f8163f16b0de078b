package pair

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/raft"
)

// TestLogStore: entries round-trip, ranges delete, a reopened store keeps
// what it was told, and damaged records give ErrBadLog, never a panic.
func TestLogStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s, err := OpenLogStore(path)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1700000000, 5)
	var logs []*raft.Log
	for i := uint64(1); i <= 10; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 2, Type: raft.LogCommand, Data: []byte{byte(i)}, Extensions: []byte("x"), AppendedAt: at})
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = OpenLogStore(path); err != nil {
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
	if diff := cmp.Diff(*logs[4], got); diff != "" {
		t.Fatalf("entry 5 (-stored +read):\n%s", diff)
	}
	if err := s.GetLog(2, &got); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("deleted entry: %v", err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("term %d %v", v, err)
	}
	if _, err := s.Get([]byte("none")); err == nil || err.Error() != "not found" {
		t.Fatalf("missing stable key: %v (raft compares the message)", err)
	}
	good, _ := encodeLog(logs[0])
	for _, bad := range [][]byte{nil, good[:10], good[:len(good)-1], append(append([]byte{}, good...), 0)} {
		if err := decodeLog(bad, &got); !errors.Is(err, ErrBadLog) {
			t.Fatalf("decode %d bytes: %v", len(bad), err)
		}
	}
}

func FuzzDecodeLog(f *testing.F) {
	good, _ := encodeLog(&raft.Log{Index: 1, Term: 1, Data: []byte("abc")})
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if decodeLog(b, &l) == nil {
			again, err := encodeLog(&l)
			if err != nil || len(again) != len(b) {
				t.Fatalf("re-encoded %d bytes of %d: %v", len(again), len(b), err)
			}
		}
	})
}
