package vault

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// history is every committed version and journal record of the catalog,
// encoded: what no agent request may change.
func history(t *testing.T, c *catalog.Catalog) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := c.AllVersionRecords(func(v catalog.Version) error {
		b, _ := json.Marshal(v)
		out[fmt.Sprintf("version %s/%s@%d", v.Computer, v.Config, v.Seq)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.AllJournal(func(computer, config string, j wire.Journal) error {
		b, _ := json.Marshal(j)
		out[fmt.Sprintf("journal %s/%s@%d+%d", computer, config, j.Base, j.N)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAgentsCannotEraseHistory walks every agent route of the
// authorization table and sends it hostile bodies and names, from the
// computer that owns the history and from another computer: every version
// and journal record committed before is still there, unchanged (new
// versions may appear: backing up is an agent's right). Deleting the
// configuration keeps its versions.
func TestAgentsCannotEraseHistory(t *testing.T) {
	// Oversized bodies make the vault close connections; the client opens
	// new ones faster than the cap per computer counts them closed.
	sv := serveTestVaultWith(t, Options{Limits: Limits{ConnsPerComputer: 1 << 20}}, "acme")
	base := "https://" + sv.addr
	owner, ownerID := sv.agentClient(t, "acme", "owner")
	other, _ := sv.agentClient(t, "acme", "other")
	now := time.Now()
	req, _ := http.NewRequest("PUT", base+wire.PathConfigs+"home", strings.NewReader(`{"kind":"files","paths":["/home"]}`))
	if resp, err := owner.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("put config: %v %v", resp, err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		commitVersion(t, sv.Vault, ownerID, "home", seq, now.Add(time.Duration(seq)*time.Minute))
	}
	for i := 0; i < 2; i++ {
		if _, err := sv.Catalog.AddJournal(ownerID, "home", wire.Journal{Base: 3, Time: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	before := history(t, sv.Catalog)
	if len(before) != 5 {
		t.Fatalf("setup: %d records", len(before))
	}

	// Hostile bodies: empty, wrong types, one naming existing versions and
	// journal records as if to replace them, deep nesting, an oversized one.
	ref := `{"id":"` + strings.Repeat("00", 32) + `","len":1}`
	bodies := []string{
		``, `{}`, `null`, `[]`, `"x"`, `{"config":`, "\xff\xfe",
		`{"config":"home","seq":1,"base":1,"listing":[],"totals":{"files":-1}}`,
		`{"config":"home","seq":3,"base":3,"n":1,"listing":[` + ref + `],"time":"2000-01-01T00:00:00Z"}`,
		`{"listing":[` + ref + `],"time":"1970-01-01T00:00:00Z","seq":2}`,
		`{"config":"../` + ownerID + `/home","seq":18446744073709551615}`,
		`{"report":{"config":"home"},"versions":[],"delete":true}`,
		strings.Repeat("[", 100000),
		`{"ids":["` + strings.Repeat("ab", 32) + `"]}`,
		strings.Repeat(" ", wire.MaxJSONBody+1),
	}
	names := []string{"home", "../home", "home%2F..%2F1", "Home", ownerID, "%00"}
	openSession := func(c *http.Client) string {
		resp, err := c.Post(base+wire.PathSessions, "application/json", strings.NewReader(`{"config":"home"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s wire.Session
		json.NewDecoder(resp.Body).Decode(&s)
		return s.ID
	}
	sent, refused := 0, 0
	for _, pattern := range sv.agentRoutes(sv.authenticateAgent).patterns {
		if _, ok := routeCaps[pattern]; !ok {
			t.Fatalf("route %q is not in routeCaps", pattern)
		}
		method, path, ok := strings.Cut(pattern, " ")
		if !ok {
			method, path = "DELETE", "/v1/versions/home"
		}
		for _, c := range []*http.Client{owner, other} {
			ns := names
			if !strings.Contains(path, "{name}") && !strings.Contains(path, "{config}") {
				ns = names[:1]
			}
			for _, name := range ns {
				for _, body := range bodies {
					sess := "nonexistent"
					if strings.Contains(path, "{id}") {
						sess = openSession(c) // commit and abort end it: a fresh one each time
					}
					p := strings.NewReplacer("{name}", name, "{config}", name, "{id}", sess).Replace(path)
					for _, m := range []string{method, "DELETE", "PUT"} {
						req, err := http.NewRequest(m, base+p, strings.NewReader(body))
						if err != nil {
							continue // a name the client refuses to send
						}
						resp, err := c.Do(req)
						if err != nil { // the vault may cut an oversized body short
							refused++
							continue
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						sent++
					}
				}
			}
		}
	}
	if resp, err := owner.Get(base + wire.PathHealth); err != nil || resp.StatusCode != 200 {
		t.Fatalf("the vault no longer answers: %v %v", resp, err)
	}
	after := history(t, sv.Catalog)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed after %d agent requests:\nbefore %s\nafter  %s", k, sent, v, after[k])
		}
	}
	// The configuration is gone (an agent may delete its specification),
	// its history is not.
	if _, err := sv.Catalog.Config(ownerID, "home"); err == nil {
		t.Log("the configuration survived the DELETE requests") // a PUT after it may have recreated it
	}
	t.Logf("%d agent requests on %d routes (%d cut short by the vault); %d records kept, %d now", sent, len(sv.agentRoutes(sv.authenticateAgent).patterns), refused, len(before), len(after))
}

// TestDeleteConfigKeepsVersions: an agent deleting its configuration
// removes the specification, never the versions or journal records;
// retention removes them later.
func TestDeleteConfigKeepsVersions(t *testing.T) {
	sv := serveTestVault(t, "acme")
	base := "https://" + sv.addr
	owner, ownerID := sv.agentClient(t, "acme", "owner")
	req, _ := http.NewRequest("PUT", base+wire.PathConfigs+"home", strings.NewReader(`{"kind":"files","paths":["/home"]}`))
	if resp, err := owner.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("put config: %v %v", resp, err)
	}
	commitVersion(t, sv.Vault, ownerID, "home", 1, time.Now())
	if _, err := sv.Catalog.AddJournal(ownerID, "home", wire.Journal{Base: 1, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	before := history(t, sv.Catalog)
	req, _ = http.NewRequest("DELETE", base+wire.PathConfigs+"home", nil)
	resp, err := owner.Do(req)
	if err != nil || resp.StatusCode >= 300 {
		t.Fatalf("delete config: %v %v", resp, err)
	}
	if _, err := sv.Catalog.Config(ownerID, "home"); err == nil {
		t.Fatal("the configuration is still there")
	}
	after := history(t, sv.Catalog)
	if len(after) != 2 || after["version "+ownerID+"/home@1"] != before["version "+ownerID+"/home@1"] {
		t.Fatalf("versions after deleting the configuration: %v", after)
	}
}
