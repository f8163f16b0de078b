package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestPortalWizard drives Debian's chromium headless through the
// configuration wizard against a real vaultd and a real `vault-agent run`
// (its own poll an hour: what it does comes through the command channel):
// a configure_backup user browses the computer's live tree down to a
// directory, ticks it, saves the configuration, backs up now and sees the
// version, and compares it with the live files; 25 hours later (vaultd restarted with its clock skewed: the
// agent's own clock is then 25 hours behind, which the vault corrects) a
// second back up now, and All Computers shows the configuration protected.
func TestPortalWizard(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (.ci/run installs it): apt-get install chromium")
	}
	pe := newPortalEnv(t)
	newGen(t, pe.src, 11).makeTree(10, 64<<10)
	startDaemonArgs(t, pe.a, "-poll", "1h")

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.Flag("ignore-certificate-errors", true), chromedp.WindowSize(1280, 900), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 90*time.Second)
	defer cancelT()
	base := "https://" + pe.portal
	signIn := func() {
		t.Helper()
		err := chromedp.Do(ctx, chromedp.Navigate(base+"/login"), chromedp.WaitVisible(chromedp.ID("user")),
			chromedp.SendKeys(chromedp.ID("user"), "cfg"), chromedp.SendKeys(chromedp.ID("password"), "cfg's long password"),
			chromedp.Click(chromedp.ID("signin")), chromedp.WaitVisible(chromedp.ID("computers")))
		if err != nil {
			t.Fatalf("sign in: %v", err)
		}
	}
	configure := base + "/computers/" + pe.comp + "/configure"
	backupNow := func() {
		t.Helper()
		err := chromedp.Do(ctx, chromedp.Navigate(configure), chromedp.WaitVisible(chromedp.ID("backup-now-wizard")),
			chromedp.Click(chromedp.ID("backup-now-wizard")),
			chromedp.Poll[chromedp.Void](`/wizard: version \d+ done/.test(document.getElementById("cmd-status").textContent)`, chromedp.WithPollingTimeout(60*time.Second)))
		if err != nil {
			st, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("cmd-status")))
			t.Fatalf("back up now: %v (status %q)", err, st)
		}
	}
	stateOf := func(config string) string {
		t.Helper()
		err := chromedp.Do(ctx, chromedp.Navigate(base+"/computers"), chromedp.WaitVisible(chromedp.ID("computers")))
		if err != nil {
			t.Fatal(err)
		}
		st, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(
			`Array.from(document.querySelectorAll("#computers tbody tr")).filter(r => r.textContent.includes(%q)).map(r => r.dataset.state).join(",")`, config)))
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	signIn()
	// Browse from / down to the source directory, one level per click,
	// each level answered by the agent.
	err = chromedp.Do(ctx, chromedp.Navigate(configure), chromedp.WaitVisible(chromedp.CSS(`#tree > li[data-path="/"]`)))
	if err != nil {
		t.Fatalf("the wizard lists no roots: %v", err)
	}
	sel, path := `#tree > li[data-path="/"]`, "/"
	for _, part := range strings.Split(strings.Trim(pe.src, "/"), "/") {
		path = filepath.Join(path, part)
		next := sel + fmt.Sprintf(` > ul > li[data-path=%q]`, path)
		err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel+" > button.dir")), chromedp.WaitVisible(chromedp.CSS(next)))
		if err != nil {
			st, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("cmd-status")))
			t.Fatalf("open %s in the tree: %v (status %q)", filepath.Dir(path), err, st)
		}
		sel = next
	}
	// One level more shows the tree's own files, then choose the directory.
	err = chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel+" > button.dir")),
		chromedp.WaitVisible(chromedp.CSS(sel+fmt.Sprintf(` > ul > li[data-path=%q]`, filepath.Join(pe.src, "empty.txt")))),
		chromedp.Click(chromedp.CSS(sel+" > input[type=checkbox]")),
		chromedp.SendKeys(chromedp.ID("cfg-name"), "wizard"),
		chromedp.SendKeys(chromedp.ID("exclude"), "*.tmp"),
		chromedp.Click(chromedp.ID("mode-scheduled")))
	if err != nil {
		t.Fatalf("choose the directory: %v", err)
	}
	paths, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("paths")))
	if paths != pe.src {
		t.Fatalf("selected %q, want %q", paths, pe.src)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err == nil {
		saveScreenshot(t, "portal-wizard.png", png)
	}
	err = chromedp.Do(ctx, chromedp.Click(chromedp.ID("save")), chromedp.WaitVisible(chromedp.CSS(`#configs tr[data-config="wizard"]`)))
	if err != nil {
		saved, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("saved")))
		t.Fatalf("save the configuration: %v (%q)", err, saved)
	}
	// The table is drawn again as the agent reports the new configuration:
	// the row read at once can be one being replaced (empty), so its text is
	// waited for.
	shows := fmt.Sprintf(`(() => { const r = document.querySelector('#configs tr[data-config="wizard"]'); return r != null && r.textContent.includes(%q) && r.textContent.includes("*.tmp"); })()`, pe.src)
	if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](shows, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		row, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#configs tr[data-config="wizard"]`)))
		t.Errorf("the saved configuration shows %q (%v)", row, err)
	}
	backupNow() // the agent may have made version 1 itself already: the schedule is 24x7
	if st := stateOf("wizard"); st != "testing configuration and initial synchronization" {
		t.Errorf("after the first version, wizard is %q", st)
	}
	// What changed since: a file added on the computer shows as added.
	newGen(t, pe.src, 12).write("since.txt", []byte("new"), 0o644)
	err = chromedp.Do(ctx, chromedp.Navigate(configure), chromedp.WaitVisible(chromedp.ID("compare-wizard")),
		chromedp.Click(chromedp.ID("compare-wizard")), chromedp.WaitVisible(chromedp.ID("compare-result")))
	if err != nil {
		st, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("cmd-status")))
		t.Fatalf("compare: %v (status %q)", err, st)
	}
	if added, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("added"))); !strings.Contains(added, filepath.Join(pe.src, "since.txt")) {
		t.Errorf("compare shows added %q, want since.txt", added)
	}

	// A day and more later: out of the testing period, a new version, protected.
	pe.v.kill()
	pe.v.env = []string{"VAULTNODE_CLOCK_SKEW=25h"}
	pe.v.start()
	signIn()
	backupNow()
	if st := stateOf("wizard"); st != "protected" {
		t.Errorf("25 hours later, after back up now, wizard is %q, want protected", st)
	}
}
