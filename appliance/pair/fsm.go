package pair

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"

	"vaultnode/appliance/catalog"
)

// The pair's own records live in the catalog, applied through the same log
// as every catalog command, so a snapshot of the catalog holds them too.
const (
	// KindMember records a member's addresses (or removes it).
	KindMember catalog.Kind = "pair_member"
	// KindBehind records that a data member lacks chunks the other has
	// (the leader stored uploads without it), or that it caught up.
	KindBehind catalog.Kind = "pair_behind"
)

var (
	bucketMembers = []byte("pair_members") // member id -> Member
	bucketBehind  = []byte("pair_behind")  // member id -> Behind
)

// Member is one member of the pair as the catalog records it.
type Member struct {
	ID      string `json:"id"`
	Raft    string `json:"raft"`            // pair address: raft and replication
	Agent   string `json:"agent,omitempty"` // agent API address (none on a witness)
	Witness bool   `json:"witness,omitempty"`
	Remove  bool   `json:"remove,omitempty"` // the command removes the record
}

// Behind says a data member lacks chunks stored since Since.
type Behind struct {
	Member string    `json:"member"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
	Caught bool      `json:"caught,omitempty"` // the command clears the record: the member caught up
}

func init() {
	catalog.RegisterKind(KindMember, func(tx *bbolt.Tx, payload []byte) (any, error) {
		var m Member
		if err := strictJSON(payload, &m); err != nil {
			return nil, err
		}
		if err := validMemberID(m.ID); err != nil {
			return nil, err
		}
		b, err := tx.CreateBucketIfNotExists(bucketMembers)
		if err != nil {
			return nil, err
		}
		if m.Remove {
			return nil, b.Delete([]byte(m.ID))
		}
		v, _ := json.Marshal(m)
		return nil, b.Put([]byte(m.ID), v)
	})
	catalog.RegisterKind(KindBehind, func(tx *bbolt.Tx, payload []byte) (any, error) {
		var r Behind
		if err := strictJSON(payload, &r); err != nil {
			return nil, err
		}
		if err := validMemberID(r.Member); err != nil {
			return nil, err
		}
		b, err := tx.CreateBucketIfNotExists(bucketBehind)
		if err != nil {
			return nil, err
		}
		if r.Caught {
			return nil, b.Delete([]byte(r.Member))
		}
		if b.Get([]byte(r.Member)) != nil {
			return nil, nil // behind since an earlier time: keep it
		}
		v, _ := json.Marshal(r)
		return nil, b.Put([]byte(r.Member), v)
	})
}

func strictJSON(b []byte, v any) error {
	if len(b) > 64<<10 {
		return fmt.Errorf("%w: pair record of %d bytes", catalog.ErrInvalid, len(b))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: pair record: %v", catalog.ErrInvalid, err)
	}
	return nil
}

// fsm applies the log to the catalog. A witness has no catalog: it keeps
// the log (it votes) and applies nothing.
type fsm struct {
	cat *catalog.Catalog
	// applied, when set, is told each applied index (Node's status and
	// waiters).
	applied func(index uint64)
	// before, when set, sees each command before the catalog applies it
	// (Config.BeforeApply).
	before func(index uint64, cmd catalog.Command)
	// restoring and restored, when set, are told the catalog's applied
	// index before and after a snapshot replaces it (Config.Restoring,
	// Config.Restored).
	restoring func(prev uint64) error
	restored  func(prev uint64) error
}

var testLogApply func(index uint64, cmd catalog.Command, skipped bool, err error)

type applyResult struct {
	res any
	err error
}

func (f *fsm) Apply(l *raft.Log) any {
	if f.applied != nil {
		defer f.applied(l.Index)
	}
	if f.cat == nil || l.Type != raft.LogCommand {
		return applyResult{}
	}
	cmd, err := catalog.DecodeCommand(l.Data)
	if err != nil {
		return applyResult{err: err}
	}
	if f.before != nil {
		f.before(l.Index, cmd)
	}
	res, skipped, err := f.cat.ApplyLog(l.Index, cmd)
	if testLogApply != nil {
		testLogApply(l.Index, cmd, skipped, err)
	}
	return applyResult{res: res, err: err}
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	if f.cat == nil {
		return emptySnapshot{}, nil
	}
	s, err := f.cat.BeginSnapshot()
	if err != nil {
		return nil, err
	}
	return catalogSnapshot{s}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if f.cat == nil {
		_, err := io.Copy(io.Discard, rc)
		return err
	}
	prev, err := f.cat.AppliedIndex()
	if err != nil {
		return fmt.Errorf("restore a catalog snapshot: %w", err)
	}
	if index, ok := snapshotIndex(rc); ok && index == prev {
		// The catalog holds this snapshot's state already (the entries up
		// to an index are the same on every member). The leader sends a
		// snapshot again when the answer to the last one was lost: raft
		// on the leader learns of an install from that answer alone, so a
		// member that stopped after its catalog was replaced and before it
		// answered gets the same snapshot once it is back. Replacing the
		// catalog by the same copy would rewrite all of it for nothing and
		// count as a second install; an earlier install left unfinished is
		// still finished (Restored).
		return f.finishRestored(prev)
	}
	if testRestored != nil {
		testRestored()
	}
	if f.restoring != nil {
		if err := f.restoring(prev); err != nil {
			return err
		}
	}
	if err := f.cat.Restore(rc); err != nil {
		return err
	}
	return f.finishRestored(prev)
}

// finishRestored tells Restored, then the applied index.
func (f *fsm) finishRestored(prev uint64) error {
	if f.restored != nil {
		if err := f.restored(prev); err != nil {
			return err // raft installs the snapshot again
		}
	}
	if f.applied != nil {
		// Copies waiting for this member to apply a sweep (HeaderSweep)
		// go on once the snapshot's sweeps were applied (Restored).
		if idx, err := f.cat.AppliedIndex(); err == nil {
			f.applied(idx)
		}
	}
	return nil
}

var testRestored func() // tests: told of each snapshot restored

// metaSnapshots is raft's snapshot store with each snapshot opened as a
// snapshotReader: raft hands FSM.Restore the reader alone (under its own
// counting one, a raft.ReadCloserWrapper), and Restore needs the
// snapshot's last index to recognise a snapshot the catalog holds already.
type metaSnapshots struct{ raft.SnapshotStore }

func (s metaSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.SnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	return meta, snapshotReader{ReadCloser: rc, index: meta.Index}, nil
}

type snapshotReader struct {
	io.ReadCloser
	index uint64
}

// snapshotIndex is the last index inside the snapshot rc reads, when
// metaSnapshots opened it.
func snapshotIndex(rc io.ReadCloser) (uint64, bool) {
	for range 8 { // raft wraps it once; more would be a loop
		switch r := rc.(type) {
		case snapshotReader:
			return r.index, true
		case raft.ReadCloserWrapper:
			rc = r.WrappedReadCloser()
		default:
			return 0, false
		}
	}
	return 0, false
}

type catalogSnapshot struct{ s *catalog.Snapshot }

func (c catalogSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := c.s.WriteTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("write catalog snapshot: %w", err)
	}
	return sink.Close()
}

func (c catalogSnapshot) Release() { c.s.Release() }

type emptySnapshot struct{}

func (emptySnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (emptySnapshot) Release()                             {}

// Members lists the members the catalog records.
func Members(cat *catalog.Catalog) ([]Member, error) {
	var out []Member
	err := cat.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketMembers)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var m Member
			if json.Unmarshal(v, &m) == nil {
				out = append(out, m)
			}
			return nil
		})
	})
	return out, err
}

// BehindRecord is the record of member as lacking chunks; false when it
// is not recorded behind (or, as BehindMembers, its record is unreadable).
func BehindRecord(cat *catalog.Catalog, member string) (Behind, bool, error) {
	var r Behind
	found := false
	err := cat.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketBehind)
		if b == nil {
			return nil
		}
		if v := b.Get([]byte(member)); v != nil {
			found = json.Unmarshal(v, &r) == nil
		}
		return nil
	})
	return r, found, err
}

// BehindMembers lists the data members recorded as lacking chunks.
func BehindMembers(cat *catalog.Catalog) ([]Behind, error) {
	var out []Behind
	err := cat.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketBehind)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r Behind
			if json.Unmarshal(v, &r) == nil {
				out = append(out, r)
			}
			return nil
		})
	})
	return out, err
}
