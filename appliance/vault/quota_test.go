package vault

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/store"
	"vaultnode/internal/wire"
)

func randomFiles(n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size)
		rand.Read(out[i])
	}
	return out
}

func wantCode(t *testing.T, err error, want string) *apiError {
	t.Helper()
	var ae *apiError
	if !errors.As(err, &ae) || ae.code != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	return ae
}

// TestQuotaRefusesOnlyTheCompanyOverIt: a company at its hard quota gets
// quota_exceeded on upload, with a message that says what to do; another
// company backs up, the first one's versions restore, verify is clean;
// after prune and collection the first company backs up again.
func TestQuotaRefusesOnlyTheCompanyOverIt(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	if err := v.NewCompany("globex"); err != nil {
		t.Fatal(err)
	}
	a := newGCAgent(t, v, "acme", "c1")
	g := newGCAgent(t, v, "globex", "g1")
	want := map[string][][]byte{}
	v1, v2, v3 := randomFiles(20, 50<<10), randomFiles(20, 50<<10), randomFiles(20, 50<<10)
	for i, files := range [][][]byte{v1, v2} {
		if _, err := a.backup(ctx, files); err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprintf("c1@%d", i+1)] = files
	}
	used := v.Store.Usage("acme")
	if counted, _ := v.Store.CountUsage(); counted["acme"] != used || used < 2*20*50<<10 {
		t.Fatalf("acme's usage is %d, the index's packs hold %d", used, counted["acme"])
	}
	if err := v.SetQuota(ctx, operator, QuotaRequest{Company: "acme", Hard: used, Warn: used / 2}); err != nil {
		t.Fatal(err)
	}
	if err := v.SetQuota(ctx, agentPrincipalOf(t, a), QuotaRequest{Company: "acme", Hard: 1 << 40}); code(err) != wire.CodeForbidden {
		t.Fatalf("an agent set its company's quota: %v", err)
	}
	_, err := a.backup(ctx, v3)
	ae := wantCode(t, err, wire.CodeQuotaExceeded)
	if ae.status != 507 || !strings.Contains(ae.msg, "vaultctl prune") || !strings.Contains(ae.msg, "quota") {
		t.Fatalf("quota refusal %d %q does not say what to do", ae.status, ae.msg)
	}
	qs, err := v.Quotas(ctx, operator)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 2 || qs[0].Company != "acme" || qs[0].State != "over" || qs[1].State != "ok" {
		t.Fatalf("quotas: %+v", qs)
	}
	for i, files := range [][][]byte{randomFiles(20, 50<<10), randomFiles(20, 50<<10)} {
		if _, err := g.backup(ctx, files); err != nil {
			t.Fatalf("globex backup beside an acme over quota: %v", err)
		}
		want[fmt.Sprintf("g1@%d", i+1)] = files
	}
	if n := restoreAll(t, v, want); n != 4 {
		t.Fatalf("%d versions restored, want 4", n)
	}
	if rep, err := v.Verify(ctx); err != nil || !rep.OK() {
		t.Fatalf("verify with a company over quota: %v %+v", err, rep)
	}

	// Prune acme's first version and collect: room again.
	if _, err := v.Catalog.Prune(catalog.PruneCmd{Versions: []catalog.VersionKey{{Computer: "c1", Config: "home", Seq: 1}}}); err != nil {
		t.Fatal(err)
	}
	delete(want, "c1@1")
	res, err := v.Collect(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if after := v.Store.Usage("acme"); after >= used || res.Reclaimed <= 0 {
		t.Fatalf("after prune and collection acme uses %d bytes (was %d; reclaimed %d)", after, used, res.Reclaimed)
	}
	if counted, _ := v.Store.CountUsage(); counted["acme"] != v.Store.Usage("acme") {
		t.Fatalf("acme's usage %d drifted from the index's %d", v.Store.Usage("acme"), counted["acme"])
	}
	seq, err := a.backup(ctx, v3)
	if err != nil {
		t.Fatalf("backup after prune and collection: %v", err)
	}
	want[fmt.Sprintf("c1@%d", seq)] = v3
	restoreAll(t, v, want)
}

func agentPrincipalOf(t *testing.T, a *gcAgent) *Principal { return a.p }

// TestFullDiskRefusesEveryoneAndRecovers: on a full data disk every
// company's upload gets no_space and nothing stored is harmed; once space
// is freed, backups go on.
func TestFullDiskRefusesEveryoneAndRecovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: TestFullDiskRefusesEveryoneAndRecovers mounts a tmpfs and needs root; run the tests as root (CI does)")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=32m,mode=0700"); err != nil {
		t.Skipf("SKIPPED LOUDLY: cannot mount a tmpfs for the disk-full test (%v); this machine forbids mounts", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	for _, co := range []string{"acme", "globex"} {
		if err := v.NewCompany(co); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	a := newGCAgent(t, v, "acme", "c1")
	g := newGCAgent(t, v, "globex", "g1")
	want := map[string][][]byte{}
	for _, x := range []*gcAgent{a, g} {
		files := randomFiles(10, 50<<10)
		seq, err := x.backup(ctx, files)
		if err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprintf("%s@%d", x.p.agent.ID, seq)] = files
	}
	// Fill the disk but for a little room.
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 1<<20)
	for left := int64(st.Bavail)*st.Bsize - 256<<10; left > 0; left -= int64(len(block)) {
		if _, err := f.Write(block[:min(int64(len(block)), left)]); err != nil {
			break
		}
	}
	f.Close()
	for _, x := range []*gcAgent{a, g} {
		// The HTTP layer answers store.ErrNoSpace with no_space (507).
		if _, err := x.backup(ctx, randomFiles(10, 100<<10)); !errors.Is(err, store.ErrNoSpace) {
			t.Fatalf("backup of %s on a full disk: %v, want store.ErrNoSpace", x.p.agent.ID, err)
		}
	}
	if n := restoreAll(t, v, want); n != 2 {
		t.Fatalf("%d versions restore on a full disk, want 2", n)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*gcAgent{a, g} {
		files := randomFiles(10, 100<<10)
		seq, err := x.backup(ctx, files)
		if err != nil {
			t.Fatalf("backup of %s once space is freed: %v", x.p.agent.ID, err)
		}
		want[fmt.Sprintf("%s@%d", x.p.agent.ID, seq)] = files
	}
	restoreAll(t, v, want)
	if rep, err := v.Verify(ctx); err != nil || !rep.OK() {
		t.Fatalf("verify after a full disk: %v %+v", err, rep)
	}
}
