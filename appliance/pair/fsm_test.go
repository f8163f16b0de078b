package pair

import (
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/raft"
	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/catalog"
)

// wrapped is raft's own reader around a snapshot it hands FSM.Restore
// (fsmRestoreAndMeasure's counting reader).
type wrapped struct{ rc io.ReadCloser }

func (w wrapped) Read(p []byte) (int, error)       { return w.rc.Read(p) }
func (w wrapped) Close() error                     { return w.rc.Close() }
func (w wrapped) WrappedReadCloser() io.ReadCloser { return w.rc }

var _ raft.ReadCloserWrapper = wrapped{}

// TestRestoreHeldSnapshot: a snapshot whose last index is the catalog's
// applied index (the leader sends it again when a member stopped before it
// answered the install) leaves the catalog as it is: Restoring is not
// told, Restored is (it finishes an install left unfinished). A member
// behind the snapshot gets its catalog replaced.
func TestRestoreHeldSnapshot(t *testing.T) {
	apply := func(c *catalog.Catalog, n int) {
		t.Helper()
		for i := 1; i <= n; i++ {
			cmd, err := catalog.NewCommand(KindMember, Member{ID: fmt.Sprint("m", i), Raft: fmt.Sprint("127.0.0.1:", i)})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.ApplyLog(uint64(i), cmd); err != nil {
				t.Fatal(err)
			}
		}
	}
	open := func() *catalog.Catalog {
		t.Helper()
		c, err := catalog.Open(t.TempDir(), catalog.Options{Log: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	leader := open()
	apply(leader, 3)
	store, err := raft.NewFileSnapshotStoreWithLogger(t.TempDir(), 2, testHCLog)
	if err != nil {
		t.Fatal(err)
	}
	snaps := metaSnapshots{store}
	sink, err := snaps.Create(raft.SnapshotVersionMax, 3, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := (&fsm{cat: leader}).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Persist(sink); err != nil {
		t.Fatal(err)
	}
	s.Release()

	var restores int
	defer func() { testRestored = nil }()
	testRestored = func() { restores++ }
	install := func(c *catalog.Catalog) (restoring, restored []uint64) {
		t.Helper()
		restores = 0
		_, rc, err := snaps.Open(sink.ID())
		if err != nil {
			t.Fatal(err)
		}
		f := &fsm{cat: c,
			restoring: func(prev uint64) error { restoring = append(restoring, prev); return nil },
			restored:  func(prev uint64) error { restored = append(restored, prev); return nil }}
		if err := f.Restore(wrapped{rc}); err != nil {
			t.Fatal(err)
		}
		return restoring, restored
	}

	held := open()
	apply(held, 3)
	restoring, restored := install(held)
	if restoring != nil || restores != 0 || !slices.Equal(restored, []uint64{3}) {
		t.Fatalf("a snapshot the catalog holds: restoring %v, %d catalog restores, restored %v; want none, none, [3]", restoring, restores, restored)
	}

	behind := open()
	apply(behind, 1)
	restoring, restored = install(behind)
	if restores != 1 || !slices.Equal(restoring, []uint64{1}) || !slices.Equal(restored, []uint64{1}) {
		t.Fatalf("a snapshot past the catalog: restoring %v, %d catalog restores, restored %v; want [1], 1, [1]", restoring, restores, restored)
	}
	if idx, err := behind.AppliedIndex(); err != nil || idx != 3 {
		t.Fatalf("the catalog applied %d after the install (%v); want 3", idx, err)
	}
	for _, c := range []*catalog.Catalog{held, behind} {
		want, _ := Members(leader)
		got, _ := Members(c)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("members after the install (-leader +member):\n%s", diff)
		}
	}
}
