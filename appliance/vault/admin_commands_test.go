package vault

import (
	"bytes"
	"encoding/json"
	"net/url"
	"testing"
	"time"

	"vaultnode/internal/wire"
)

// TestAdminBackupNowQueuesACommand: vaultctl backup-now (POST
// /admin/run-now) goes through the agents' command channel like the
// portal's back up now: a backup command the agent's poll receives, read
// back with GET /admin/commands, and no settings counter.
func TestAdminBackupNowQueuesACommand(t *testing.T) {
	sv := serveTestVault(t, "acme")
	agent := recordComputer(t, sv.Vault, "pc-a", "acme")
	if _, err := sv.Catalog.PutConfig("pc-a", wire.Config{Name: "home", Kind: wire.KindFiles, Paths: []string{"/home"}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	admin := sv.adminClient()
	body, _ := json.Marshal(RunNowRequest{Computer: "pc-a", Config: "home"})
	resp, err := admin.Post("http://vault"+AdminRunNow, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var cv CommandView
	err = json.NewDecoder(resp.Body).Decode(&cv)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || cv.ID == "" || cv.Kind != wire.CmdBackup || cv.Backup == nil || cv.Backup.Config != "home" {
		t.Fatalf("backup-now: %d %+v %v; want a queued backup command of home", resp.StatusCode, cv, err)
	}
	cp, _ := sv.Catalog.Computer("pc-a")
	if len(cp.Settings.RunNow) != 0 {
		t.Errorf("backup-now still counts in the settings: %v", cp.Settings.RunNow)
	}
	got := poll(t, sv.Vault, agent)
	if len(got) != 1 || got[0].ID != cv.ID || got[0].Kind != wire.CmdBackup {
		t.Fatalf("the agent's poll: %+v; want command %s", got, cv.ID)
	}
	if _, err := sv.FinishCommand(t.Context(), agent, cv.ID, wire.CommandResult{State: wire.CmdDone,
		Backup: &wire.BackupResult{Config: "home", Seq: 1}}); err != nil {
		t.Fatal(err)
	}
	resp, err = admin.Get("http://vault" + AdminCommands + "?computer=pc-a&id=" + url.QueryEscape(cv.ID) + "&wait=5")
	if err != nil {
		t.Fatal(err)
	}
	var back CommandView
	err = json.NewDecoder(resp.Body).Decode(&back)
	resp.Body.Close()
	if err != nil || back.State != wire.CmdDone || back.Result == nil || back.Result.Backup.Seq != 1 {
		t.Fatalf("GET %s: %d %+v %v; want it done with version 1", AdminCommands, resp.StatusCode, back, err)
	}
	// An unknown configuration is refused before anything is queued.
	body, _ = json.Marshal(RunNowRequest{Computer: "pc-a", Config: "nope"})
	resp, err = admin.Post("http://vault"+AdminRunNow, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("backup-now of an unknown configuration: %d; want 404", resp.StatusCode)
	}
}
