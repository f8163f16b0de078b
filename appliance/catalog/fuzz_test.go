package catalog

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzRecords feeds every record decoder arbitrary keys and values: each
// either decodes a record that agrees with its key or fails with
// ErrCorrupt, never panics. The seeds run in every `go test`.
func FuzzRecords(f *testing.F) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	m := wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: 7, Started: now, Finished: now,
		Listing: []tree.ChunkRef{{Len: 10}}}
	f.Add(uint8(0), []byte("acme"), mustJSON(Company{Name: "acme", Sealed: []byte{1}, Created: now}))
	f.Add(uint8(1), make([]byte, 32), mustJSON(Token{Company: "acme", Expires: now}))
	f.Add(uint8(2), []byte("pc-1"), mustJSON(Computer{ID: "pc-1", Company: "acme"}))
	f.Add(uint8(3), cfgKey("pc-1", "home"), mustJSON(wire.Config{Name: "home"}))
	f.Add(uint8(4), verKey("pc-1", "home", 7), mustJSON(Version{Manifest: m, ManifestID: ID{9}}))
	f.Add(uint8(5), journalKey("pc-1", "home", 7, 2), mustJSON(wire.Journal{Base: 7, N: 2, Time: now}))
	f.Add(uint8(6), cfgKey("pc-1", "home"), mustJSON(wire.Report{Config: "home", Time: now}))
	f.Add(uint8(4), []byte("x"), []byte("{"))
	f.Add(uint8(5), []byte("pc-1/home/\x00"), []byte("null"))
	f.Add(uint8(4), verKey("pc-1", "home", 7), []byte(`{"computer":"pc-1","config":"home","seq":7,"manifest_id":"zz"}`))
	f.Add(uint8(2), []byte("pc-1"), []byte(`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`))
	f.Fuzz(func(t *testing.T, which uint8, k, v []byte) {
		var err error
		switch which % 7 {
		case 0:
			var co Company
			if co, err = decodeCompany(k, v); err == nil && co.Name != string(k) {
				t.Fatalf("company %q under key %q", co.Name, k)
			}
		case 1:
			_, err = decodeToken(k, v)
		case 2:
			var cp Computer
			if cp, err = decodeComputer(k, v); err == nil && cp.ID != string(k) {
				t.Fatalf("computer %q under key %q", cp.ID, k)
			}
		case 3:
			_, err = decodeConfig(k, v)
		case 4:
			var ver Version
			if ver, err = decodeVersion(k, v); err == nil && string(verKey(ver.Computer, ver.Config, ver.Seq)) != string(k) {
				t.Fatalf("version %s/%s@%d under key %q", ver.Computer, ver.Config, ver.Seq, k)
			}
		case 5:
			var cp, cfg string
			var j wire.Journal
			if cp, cfg, j, err = decodeJournal(k, v); err == nil && string(journalKey(cp, cfg, j.Base, j.N)) != string(k) {
				t.Fatalf("journal %s/%s %d.%d under key %q", cp, cfg, j.Base, j.N, k)
			}
		case 6:
			_, err = decodeReport(k, v)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error not marked corrupt: %v", err)
		}
	})
}

// FuzzCommand decodes arbitrary bytes as a command and applies it: a bad
// command is refused with an error, never a panic, and leaves every record
// decodable.
func FuzzCommand(f *testing.F) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	seed := func(kind Kind, p any) {
		cmd, err := NewCommand(kind, p)
		if err != nil {
			f.Fatal(err)
		}
		b, _ := cmd.Marshal()
		f.Add(b)
	}
	seed(KindCreateCompany, CreateCompanyCmd{Company: Company{Name: "beta", Sealed: []byte{1}}})
	seed(KindAddToken, AddTokenCmd{Hash: make([]byte, 32), Token: Token{Company: "acme", Expires: now.Add(time.Hour)}})
	seed(KindEnroll, EnrollCmd{Hash: make([]byte, 32), Now: now, Computer: Computer{ID: "pc-2", Company: "acme"}})
	seed(KindRevoke, RevokeCmd{Computer: "pc-1", Time: now})
	seed(KindSetSettings, SetSettingsCmd{Computer: "pc-1", Settings: wire.Settings{Bandwidth: "1Mbit/s"}})
	seed(KindPutConfig, PutConfigCmd{Computer: "pc-1", Config: wire.Config{Name: "home"}, Now: now})
	seed(KindDeleteConfig, DeleteConfigCmd{Computer: "pc-1", Name: "home"})
	seed(KindAddVersion, AddVersionCmd{Version: Version{Manifest: wire.Manifest{Computer: "pc-1", Config: "home", Seq: 1}}})
	seed(KindAddJournal, AddJournalCmd{Computer: "pc-1", Config: "home", Journal: wire.Journal{Base: 1}})
	seed(KindPutReport, PutReportCmd{Computer: "pc-1", Report: wire.Report{Config: "home", Time: now}})
	seed(KindContact, ContactCmd{Seen: map[string]time.Time{"pc-1": now}})
	seed(KindSetContact, SetContactCmd{Computer: "pc-1", Contact: "it@example.com"})
	seed(KindAudit, AuditCmd{Entry: AuditEntry{Time: now, Principal: "operator admin", Kind: "operator", Action: "POST /x", Detail: "d"}})
	f.Add([]byte(`{"kind":"add_version","payload":{"version":{"computer":"pc-1/x","config":"home","seq":2}}}`))
	f.Add([]byte(`{"kind":"put_config","payload":{"computer":"","config":{"name":"a/b"}}}`))
	f.Add([]byte(`{"kind":"nope","payload":{}}`))

	c, err := Open(f.TempDir(), Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	enrolled(f, c, now, "pc-1")
	f.Fuzz(func(t *testing.T, b []byte) {
		cmd, err := DecodeCommand(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error not marked corrupt: %v", err)
			}
			return
		}
		c.Apply(cmd)
		if err := c.AllVersionRecords(func(Version) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if err := c.AuditLog(0, func(AuditEntry) bool { return true }); err != nil {
			t.Fatalf("audit log after %s: %v", cmd.Kind, err)
		}
		vs, _ := c.VersionRecords("pc-1", "")
		for _, v := range vs {
			if v.Computer != "pc-1" {
				t.Fatalf("version of %q listed under pc-1", v.Computer)
			}
		}
	})
}
