package vault

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/mail"
	"vaultnode/internal/clock"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// file is one node of a test version: its path, content and status.
type testFile struct {
	path   string
	data   []byte
	status tree.Status
}

// backupFiles commits a version of files through the operations.
func (a *gcAgent) backupFiles(ctx context.Context, t *testing.T, files []testFile) uint64 {
	t.Helper()
	s, err := a.v.OpenSession(ctx, a.p, "home")
	if err != nil {
		t.Fatal(err)
	}
	var frames []wire.Frame
	var lst bytes.Buffer
	w, _ := tree.NewWriter(&lst)
	slices.SortFunc(files, func(x, y testFile) int { return tree.Compare([]byte(x.path), []byte(y.path)) })
	for _, f := range files {
		n := &tree.Node{Path: []byte(f.path), Type: tree.TypeFile, Mode: 0o644, Size: int64(len(f.data)), Status: f.status}
		if f.status != tree.StatusOK {
			n.Size, n.Err = 0, "permission denied"
		} else if len(f.data) > 0 {
			id := a.hs.Sum(f.data)
			frames = append(frames, wire.Frame{ID: id, Kind: wire.FrameData, PlainLen: uint32(len(f.data)), Payload: f.data})
			n.Chunks = []tree.ChunkRef{{ID: id, Len: uint32(len(f.data))}}
		}
		if err := w.Write(n); err != nil {
			t.Fatal(err)
		}
	}
	lid := a.hs.Sum(lst.Bytes())
	frames = append(frames, wire.Frame{ID: lid, Kind: wire.FrameListing, PlainLen: uint32(lst.Len()), Payload: lst.Bytes()})
	var body []byte
	for i := range frames {
		body = wire.AppendFrame(body, &frames[i])
	}
	if _, err := a.v.Upload(ctx, a.p, s.ID, int64(len(body)), bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	c, err := a.v.Commit(ctx, a.p, s.ID, wire.Commit{Listing: []tree.ChunkRef{{ID: lid, Len: uint32(lst.Len())}}})
	if err != nil {
		t.Fatal(err)
	}
	return c.Seq
}

// outbox is the mail queued so far, by recipient: subjects.
func outbox(t *testing.T, v *Vault) map[string][]string {
	t.Helper()
	ms, err := v.Mail.List()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, m := range ms {
		out[m.To] = append(out[m.To], m.Kind+": "+m.Subject)
	}
	return out
}

func notify(t *testing.T, v *Vault) {
	t.Helper()
	if err := v.NotifyOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestNotify: one message per change of state, to the computer's
// technical contact and to the users who chose the kind and cover the
// computer; a digest user gets one message a day; the testing period's
// warnings reach the page and the contact; nothing already true when the
// notifier first looks is told.
func TestNotify(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Now())
	// A zone where the test starts at noon: the digest hour (07:00) is
	// far on either side.
	u := clk.Now().UTC()
	zone := time.FixedZone("test", int((12*time.Hour - (time.Duration(u.Hour())*time.Hour + time.Duration(u.Minute())*time.Minute)).Seconds()))
	v, err := Open(Options{Dir: t.TempDir(), Listen: "127.0.0.1:0", Clock: clk, Zone: zone, OfflineMail: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for _, c := range []string{"acme", "globex"} {
		if err := v.NewCompany(c); err != nil {
			t.Fatal(err)
		}
	}
	old := newGCAgent(t, v, "acme", "pc-old")
	old.backupFiles(ctx, t, []testFile{{path: "a", data: []byte("already protected")}})
	notify(t, v) // the first look: pc-old's protection is not news
	if got := outbox(t, v); len(got) != 0 {
		t.Fatalf("the first look queued %v", got)
	}

	a := newGCAgent(t, v, "acme", "pc-a1")
	newGCAgent(t, v, "globex", "pc-g1")
	if err := v.Catalog.SetContact("pc-a1", "it@acme.example"); err != nil {
		t.Fatal(err)
	}
	add := func(u UserRequest, prefs MailPrefs) {
		t.Helper()
		u.Password = "password-of-" + u.Name
		if _, err := v.AddUser(ctx, operator, u); err != nil {
			t.Fatal(err)
		}
		if _, err := v.SetUserMail(ctx, operator, u.Name, prefs); err != nil {
			t.Fatal(err)
		}
	}
	add(UserRequest{Name: "ann", Company: "acme"}, MailPrefs{Email: "ann@acme.example"})
	add(UserRequest{Name: "dan", Company: "acme"}, MailPrefs{Email: "dan@acme.example", Digest: true})
	add(UserRequest{Name: "gil", Company: "globex"}, MailPrefs{Email: "gil@globex.example"})
	add(UserRequest{Name: "quiet", Company: "acme"}, MailPrefs{Email: "quiet@acme.example", Events: []string{EventError}})
	add(UserRequest{Name: "op", Kind: catalog.UserOperator, Caps: []string{"operate"}}, MailPrefs{Email: "op@provider.example"})

	// The initial synchronization completes, with a cache directory:
	// protected (with what it covers) and a warning; the next version has
	// an unreadable file: a warning again.
	a.backupFiles(ctx, t, []testFile{{path: "home/ann/report.txt", data: []byte("the report")},
		{path: "home/ann/.cache/thumbs/1.png", data: bytes.Repeat([]byte("c"), 3000)}})
	notify(t, v)
	a.backupFiles(ctx, t, []testFile{{path: "home/ann/report.txt", data: []byte("the report")},
		{path: "home/ann/.cache/thumbs/1.png", data: bytes.Repeat([]byte("c"), 3000)},
		{path: "home/ann/secret", status: tree.StatusUnreadable}})
	notify(t, v)
	got := outbox(t, v)
	for _, to := range []string{"it@acme.example", "ann@acme.example"} {
		if !hasPrefix(got[to], "protected: pc-a1 is now protected") || !hasPrefix(got[to], "warnings: pc-a1: configuration home needs a look") {
			t.Errorf("%s got %v, want protected and warnings", to, got[to])
		}
	}
	for _, to := range []string{"dan@acme.example", "gil@globex.example", "quiet@acme.example", "op@provider.example"} {
		if len(got[to]) != 0 {
			t.Errorf("%s got %v, want nothing (digest, other company, chose errors only, operator defaults)", to, got[to])
		}
	}
	body := mailTo(t, v, "it@acme.example", EventProtected)
	for _, want := range []string{"/home", "version", "protected"} {
		if !strings.Contains(body, want) {
			t.Errorf("the protected mail lacks %q:\n%s", want, body)
		}
	}
	if n := countPrefix(got["it@acme.example"], "warnings:"); n != 2 {
		t.Errorf("contact got %d warnings mails, want 2 (one per new finding)", n)
	}
	warn := mailTo(t, v, "it@acme.example", EventWarnings)
	for _, want := range []string{"home/ann/.cache", "temporary or cache"} {
		if !strings.Contains(warn, want) {
			t.Errorf("the warnings mail lacks %q:\n%s", want, warn)
		}
	}
	st, err := v.Status("acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range st {
		if row.Computer == "pc-a1" && len(row.Warnings) != 2 {
			t.Errorf("status of pc-a1 shows warnings %q, want 2", row.Warnings)
		}
	}
	// All Computers shows them.
	var page bytes.Buffer
	if err := portalTemplates.ExecuteTemplate(&page, "computers.html", map[string]any{"Title": "All Computers", "P": operator, "Rows": st, "Total": len(st), "Limit": MaxPageRows}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page.String(), `class="warning">⚠ temporary or cache directories`) {
		t.Error("All Computers does not show the testing period's warnings")
	}

	// Nothing changed: nothing more.
	before := len(mustList(t, v))
	notify(t, v)
	notify(t, v)
	if n := len(mustList(t, v)); n != before {
		t.Fatalf("%d messages after two more looks with nothing new, want %d", n, before)
	}

	// Offline longer than the threshold: once; back (and backed up):
	// recovered.
	clk.Advance(time.Hour)
	notify(t, v)
	if got := outbox(t, v)["it@acme.example"]; countPrefix(got, "offline:") != 0 {
		t.Errorf("contact got %v an hour into the absence, want no offline mail before 2 hours", got)
	}
	clk.Advance(time.Hour + time.Minute)
	v.Catalog.Seen("pc-old", clk.Now())
	notify(t, v)
	notify(t, v)
	if got := outbox(t, v)["it@acme.example"]; countPrefix(got, "offline: pc-a1 has been offline") != 1 {
		t.Errorf("contact got %v, want one offline mail", got)
	}
	v.Catalog.Seen("pc-a1", clk.Now())
	a.backupFiles(ctx, t, []testFile{{path: "home/ann/report.txt", data: []byte("the report")}})
	notify(t, v)
	if got := outbox(t, v)["ann@acme.example"]; countPrefix(got, "recovered: pc-a1 is back") != 1 {
		t.Errorf("ann got %v, want one recovered mail", got)
	}

	// dan's digest goes once, at the next 07:00.
	if n := len(outbox(t, v)["dan@acme.example"]); n != 0 {
		t.Fatalf("dan got %d messages before the digest hour", n)
	}
	now := clk.Now().In(zone)
	next := time.Date(now.Year(), now.Month(), now.Day(), DigestHour, 0, 0, 0, zone)
	if !next.After(now) {
		next = next.AddDate(0, 0, 1)
	}
	clk.Set(next.Add(time.Minute))
	v.Catalog.Seen("pc-a1", clk.Now())
	v.Catalog.Seen("pc-old", clk.Now())
	st, _ = v.Status("")
	for _, r := range st {
		t.Logf("%s %s %s seen %s now %s", r.Computer, r.State, r.Detail, r.LastSeen, clk.Now())
	}
	notify(t, v)
	notify(t, v)
	if got := outbox(t, v)["dan@acme.example"]; len(got) != 1 || !strings.HasPrefix(got[0], "digest: vaultnode daily digest") {
		t.Fatalf("dan got %v, want one digest", got)
	} else if d := mailTo(t, v, "dan@acme.example", "digest"); !strings.Contains(d, "pc-a1 is now protected") || !strings.Contains(d, "offline") {
		t.Errorf("the digest lacks the events:\n%s", d)
	}

	// The quota's warning level: the company's users and the operator.
	if err := v.SetQuota(ctx, operator, QuotaRequest{Company: "acme", Hard: 1 << 40, Warn: 1}); err != nil {
		t.Fatal(err)
	}
	notify(t, v)
	for _, to := range []string{"ann@acme.example", "op@provider.example"} {
		if countPrefix(outbox(t, v)[to], "quota: Company acme") != 1 {
			t.Errorf("%s got %v, want one quota mail", to, outbox(t, v)[to])
		}
	}
	if countPrefix(outbox(t, v)["gil@globex.example"], "quota") != 0 {
		t.Error("globex's user heard of acme's quota")
	}
}

func mustList(t *testing.T, v *Vault) []mail.Message {
	ms, err := v.Mail.List()
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func mailTo(t *testing.T, v *Vault, to, kind string) string {
	t.Helper()
	for _, m := range mustList(t, v) {
		if m.To == to && m.Kind == kind {
			full, err := v.Mail.Get(m.ID)
			if err != nil {
				t.Fatal(err)
			}
			return full.Body
		}
	}
	t.Fatalf("no %s mail to %s", kind, to)
	return ""
}

func hasPrefix(ss []string, p string) bool { return countPrefix(ss, p) > 0 }

func countPrefix(ss []string, p string) int {
	n := 0
	for _, s := range ss {
		if strings.HasPrefix(s, p) {
			n++
		}
	}
	return n
}
