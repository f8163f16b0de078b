package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestPortalBrowser drives Debian's chromium headless against a real vaultd
// and real vault-agents: the first operator signs in with the one-time
// password vaultd printed, sees the new computers in All Computers in their
// testing state, filters, sorts, signs out; a company user sees only their
// company. A screenshot of All Computers goes to out/portal/ (and, with
// VAULTNODE_SCREENSHOTS=docs, to docs/portal-all-computers.png for the
// README).
func TestPortalBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (.ci/run installs it): apt-get install chromium")
	}
	root := t.TempDir()
	portal := freeAddr(t)
	v := startVaultPortal(t, filepath.Join(root, "vault"), portal)
	var password string
	for _, l := range v.banner {
		if _, after, ok := strings.Cut(l, "one-time password "); ok {
			password = strings.Fields(after)[0]
		}
	}
	if password == "" || !strings.Contains(strings.Join(v.banner, "\n"), "portal on https://"+portal) {
		t.Fatalf("vaultd's first start did not print the portal and a one-time password:\n%s", strings.Join(v.banner, "\n"))
	}
	// Two companies, a computer each, backed up once; a second computer of
	// acme, with no configuration, to restore onto.
	agents := map[string]*agent{}
	for _, c := range []struct{ company, name string }{{"acme", "pc-acme-1"}, {"globex", "pc-globex-1"}} {
		v.mustCtl("company", "create", c.company)
		src := filepath.Join(root, c.name)
		g := newGen(t, src, 7)
		g.makeTree(30, 1)
		if err := os.WriteFile(filepath.Join(src, "report-2026.txt"), bytes.Repeat([]byte("the quarterly figures\n"), 5000), 0o640); err != nil {
			t.Fatal(err)
		}
		a := &agent{t: t, state: filepath.Join(root, c.name+"-agent")}
		a.must("enroll", "-vault", v.addr, "-token", v.token(c.company), "-name", c.name)
		a.must("config", "set", "home", "-path", src)
		a.backup("home")
		agents[c.name] = a
	}
	acme2 := &agent{t: t, state: filepath.Join(root, "pc-acme-2-agent")}
	acme2.must("enroll", "-vault", v.addr, "-token", v.token("acme"), "-name", "pc-acme-2")
	startDaemonArgs(t, agents["pc-acme-1"])
	startDaemonArgs(t, acme2)
	cmd := exec.Command(filepath.Join(binDir, "vaultctl"), "-data", v.dir, "user", "add", "carol", "-company", "acme", "-caps", "view", "-password-stdin")
	cmd.Stdin = strings.NewReader("carol's long password\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vaultctl user add: %v\n%s", err, out)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.Flag("ignore-certificate-errors", true), chromedp.WindowSize(1280, 720), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()
	base := "https://" + portal
	const testing = "testing configuration and initial synchronization"

	// visibleRows lists the computer names of the rows shown.
	visibleRows := func() []string {
		t.Helper()
		names, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#computers tbody tr")).filter(r => !r.hidden).map(r => r.querySelector("td[title]").textContent)`))
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	signIn := func(user, pw string) {
		t.Helper()
		err := chromedp.Do(ctx,
			chromedp.Navigate(base+"/computers"), // signed out: to the sign-in page
			chromedp.WaitVisible(chromedp.ID("user")))
		if err != nil {
			t.Fatalf("open /computers signed out: %v", err)
		}
		url, err := chromedp.Run(ctx, chromedp.Location())
		if err != nil {
			t.Fatal(err)
		}
		err = chromedp.Do(ctx,
			chromedp.SendKeys(chromedp.ID("user"), user),
			chromedp.SendKeys(chromedp.ID("password"), pw),
			chromedp.Click(chromedp.ID("signin")),
			chromedp.WaitVisible(chromedp.CSS(`#computers, #must-change`)),
		)
		if err != nil {
			t.Fatalf("sign in as %s: %v", user, err)
		}
		// A one-time password goes to the account page, and can only be
		// changed there.
		if at, _ := chromedp.Run(ctx, chromedp.Location()); strings.HasSuffix(at, "/account") {
			err = chromedp.Do(ctx,
				chromedp.Navigate(base+"/computers"), chromedp.WaitVisible(chromedp.ID("must-change")),
				chromedp.SendKeys(chromedp.ID("current"), pw),
				chromedp.SendKeys(chromedp.ID("new"), pw+" of my own"),
				chromedp.Click(chromedp.ID("change")),
				chromedp.WaitVisible(chromedp.ID("account-done")),
				chromedp.Click(chromedp.ID("to-computers")),
				chromedp.WaitVisible(chromedp.ID("computers")))
			if err != nil {
				t.Fatalf("%s changes the one-time password: %v", user, err)
			}
		}
		if !strings.HasSuffix(url, "/login") {
			t.Fatalf("signed out, /computers went to %s, want /login", url)
		}
	}

	// A wrong password keeps the browser on the sign-in page with the reason.
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/login"),
		chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.SendKeys(chromedp.ID("user"), "admin"),
		chromedp.SendKeys(chromedp.ID("password"), "not the password"),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("login-error")),
	)
	if err != nil {
		t.Fatalf("wrong password: %v", err)
	}
	msg, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("login-error")))
	if err != nil || !strings.Contains(msg, "wrong user name or password") {
		t.Fatalf("wrong password: %q %v", msg, err)
	}

	signIn("admin", password)
	table, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#computers tbody")))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"pc-acme-1", "pc-globex-1", "acme", "globex", testing, "home", "unlimited"} {
		if !strings.Contains(table, want) {
			t.Errorf("All Computers for the operator lacks %q:\n%s", want, table)
		}
	}
	if got := visibleRows(); len(got) != 2 {
		t.Fatalf("rows shown: %v, want both computers", got)
	}
	// Filter by text, then by state, then clear.
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("filter"), "globex")); err != nil {
		t.Fatal(err)
	}
	if got := visibleRows(); len(got) != 1 || got[0] != "pc-globex-1" {
		t.Errorf("filtered by \"globex\": %v, want [pc-globex-1]", got)
	}
	err = chromedp.Do(ctx, setField("filter", "", "input"), selectState("protected"))
	if err != nil {
		t.Fatal(err)
	}
	if got := visibleRows(); len(got) != 0 {
		t.Errorf("filtered by state protected (both are testing): %v", got)
	}
	err = chromedp.Do(ctx, selectState(testing))
	if err != nil {
		t.Fatal(err)
	}
	if got := visibleRows(); len(got) != 2 {
		t.Errorf("filtered by state %q: %v, want both", testing, got)
	}
	// Sort by computer, descending: the page refreshes from the JSON API.
	err = chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`th[data-key="computer_name"]`)),
		chromedp.WaitVisible(chromedp.CSS(`th[aria-sort="ascending"]`)),
		chromedp.Click(chromedp.CSS(`th[data-key="computer_name"]`)),
		chromedp.WaitVisible(chromedp.CSS(`th[aria-sort="descending"]`)),
		chromedp.Poll[chromedp.Void](`(() => { const r = Array.from(document.querySelectorAll("#computers tbody td[title]")).map(td => td.textContent); return r.length == 2 && r[0] == "pc-globex-1"; })()`, chromedp.WithPollingTimeout(20*time.Second)))
	if err != nil {
		t.Errorf("sort by computer, descending: %v (rows %v)", err, visibleRows())
	}
	err = chromedp.Do(ctx, selectState(""),
		chromedp.Poll[chromedp.Void](`document.getElementById("refreshed").textContent != ""`, chromedp.WithPollingTimeout(20*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	saveScreenshot(t, "portal-all-computers.png", png)

	browserRestore(t, ctx, v, root)

	// Sign out: the session is gone, /computers goes to the sign-in page.
	err = chromedp.Do(ctx, chromedp.Click(chromedp.ID("signout")), chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.Navigate(base+"/computers"), chromedp.WaitVisible(chromedp.ID("user")))
	url, _ := chromedp.Run(ctx, chromedp.Location())
	if err != nil || !strings.HasSuffix(url, "/login") {
		t.Fatalf("after sign-out /computers is %s (%v), want the sign-in page", url, err)
	}

	// A company user sees their company only.
	signIn("carol", "carol's long password")
	if got := visibleRows(); len(got) != 1 || got[0] != "pc-acme-1" {
		t.Errorf("carol of acme sees %v, want [pc-acme-1]", got)
	}
	if table, err = chromedp.Run(ctx, chromedp.Text(chromedp.ID("computers"))); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(table, "globex") {
		t.Errorf("carol of acme sees globex:\n%s", table)
	}

	// vaultctl on the admin socket: list, capabilities, and a reset that
	// signs carol out of the browser.
	v.mustCtl("user", "caps", "carol", "view,restore", "-computers", "pc-acme-1")
	list := v.mustCtl("user", "list")
	if !strings.Contains(list, "carol") || !strings.Contains(list, "view,restore") || !strings.Contains(list, "admin") {
		t.Errorf("vaultctl user list:\n%s", list)
	}
	out := v.mustCtl("user", "passwd", "carol")
	if !strings.Contains(out, "one-time password of carol: ") {
		t.Errorf("vaultctl user passwd printed %q", out)
	}
	err = chromedp.Do(ctx, chromedp.Navigate(base+"/computers"), chromedp.WaitVisible(chromedp.ID("user")))
	url, _ = chromedp.Run(ctx, chromedp.Location())
	if err != nil || !strings.HasSuffix(url, "/login") {
		t.Errorf("after vaultctl user passwd, carol's browser is on %s (%v), want the sign-in page", url, err)
	}
	if r := v.ctl("user", "caps", "carol", "operate"); r.code == 0 || !strings.Contains(r.stderr, "cannot be given") {
		t.Errorf("vaultctl user caps carol operate: %s", r)
	}
}

// selectState picks a state in the filter and tells the page, as a person's
// choice would.
func selectState(state string) chromedp.Action[chromedp.Void] {
	return setField("state", state, "change")
}

// setField sets a form field's value and fires event on it.
func setField(id, value, event string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const e = document.getElementById(%q); e.value = %q; e.dispatchEvent(new Event(%q)); })()`, id, value, event))
}

// saveScreenshot writes a test artifact to out/portal/ at the module root,
// and All Computers to docs/ when VAULTNODE_SCREENSHOTS=docs (the README's
// picture).
func saveScreenshot(t *testing.T, name string, png []byte) {
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot %s is not a PNG (%d bytes)", name, len(png))
	}
	dir := filepath.Join("..", "..", "out", "portal")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: out/portal/%s (%d bytes)", name, len(png))
	if os.Getenv("VAULTNODE_SCREENSHOTS") == "docs" && name == "portal-all-computers.png" { // the README's; the others stay artifacts
		if err := os.WriteFile(filepath.Join("..", "..", "docs", name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// browserRestore drills into pc-acme-1, sets its technical contact,
// browses its version, searches a file, restores it into another directory
// of pc-acme-1 and onto pc-acme-2 (their daemons run the restores through
// the command channel), compares the bytes, and looks at the audit log,
// the enrolment and the users pages; each page is a screenshot.
func browserRestore(t *testing.T, ctx context.Context, v *vaultProc, root string) {
	t.Helper()
	src := filepath.Join(root, "pc-acme-1", "report-2026.txt")
	want, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		saveScreenshot(t, name, png)
	}
	poll := func(what, js string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](js, chromedp.WithPollingTimeout(90*time.Second))); err != nil {
			page, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
			t.Fatalf("%s: %v\npage:\n%s", what, err, page)
		}
	}
	err = chromedp.Do(ctx,
		chromedp.Evaluate[chromedp.Void](`Array.from(document.querySelectorAll("#computers a")).find(a => a.textContent == "pc-acme-1").click()`),
		chromedp.WaitVisible(chromedp.ID("restore-link")))
	if err != nil {
		t.Fatalf("open pc-acme-1's page: %v", err)
	}
	page, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("computer")))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"pc-acme-1", "home", "testing configuration and initial synchronization", "Version", "Last contact", "⚠ swap files"} {
		if !strings.Contains(page, want) {
			t.Errorf("pc-acme-1's page lacks %q:\n%s", want, page)
		}
	}
	err = chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("contact"), "it@acme.example"), chromedp.Click(chromedp.ID("contact-save")))
	if err != nil {
		t.Fatal(err)
	}
	poll("the contact is saved", `document.getElementById("contact-status").textContent == "saved"`)
	shot("portal-computer.png")
	acme1, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("computer").dataset.computer`))
	if err != nil {
		t.Fatal(err)
	}

	// Browse: the version's root, then a search for the file.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("restore-link")), chromedp.WaitVisible(chromedp.ID("files"))); err != nil {
		t.Fatal(err)
	}
	poll("the version's root is listed", `document.querySelectorAll("#files tbody tr[data-path]").length > 0`)
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("search"), "REPORT-2026")); err != nil {
		t.Fatal(err)
	}
	row := fmt.Sprintf(`#files tbody tr[data-path=%q] input`, src)
	poll("the search finds the file", fmt.Sprintf(`document.querySelectorAll("#files tbody tr[data-path]").length == 1 && document.querySelector(%q) != null`, row))
	restoreInto := func(target, dir, policy string) string {
		t.Helper()
		err := chromedp.Do(ctx,
			chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const s = document.getElementById("target"); s.value = Array.from(s.options).find(o => o.text.startsWith(%q)).value; })()`, target)),
			setField("to", dir, "input"), setField("existing", policy, "change"),
			chromedp.Evaluate[chromedp.Void](`document.getElementById("restore-state").textContent = ""`), // not the last restore's
			chromedp.Click(chromedp.ID("restore-start")))
		if err != nil {
			t.Fatal(err)
		}
		poll("the restore onto "+target+" ends", `["done", "failed", "interrupted", "refused"].includes(document.getElementById("restore-state").textContent)`)
		state, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("restore-progress")))
		if !strings.Contains(state, "done") || (policy != "overwrite" && !strings.Contains(state, "1 files")) {
			t.Fatalf("restore onto %s into %s: %s", target, dir, state)
		}
		return state
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(row))); err != nil {
		t.Fatal(err)
	}
	into := filepath.Join(root, "restored")
	restoreInto("pc-acme-1", into, "skip")
	got, err := os.ReadFile(filepath.Join(into, src))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the file restored from the browser into %s: %d bytes (%v), want the %d bytes backed up", into, len(got), err, len(want))
	}
	shot("portal-restore.png")
	// Again, keeping both: the restored copy is named .restored.
	restoreInto("pc-acme-1", into, "keep-both")
	if got, err := os.ReadFile(filepath.Join(into, src+".restored")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("keep-both: %d bytes (%v)", len(got), err)
	}
	// Again, overwriting: the file there is the version's, so it is kept
	// (checked, not downloaded), and the page says so.
	if state := restoreInto("pc-acme-1", into, "overwrite"); !strings.Contains(state, "1 of them already as in the version") {
		t.Errorf("overwrite over the file restored before shows:\n%s\nwant it kept", state)
	}
	if got, err := os.ReadFile(filepath.Join(into, src)); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("overwrite: %d bytes (%v)", len(got), err)
	}
	// Onto pc-acme-2, whose agent reads pc-acme-1's version.
	onto := filepath.Join(root, "onto-acme-2")
	restoreInto("pc-acme-2", onto, "skip")
	if got, err := os.ReadFile(filepath.Join(onto, src)); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the file restored onto pc-acme-2 into %s: %d bytes (%v)", onto, len(got), err)
	}

	// A moment: now is after the version; an hour ago, before any.
	err = chromedp.Do(ctx, setField("version", "at", "change"), setField("search", "", "input"),
		setField("at", time.Now().Format("2006-01-02T15:04:05"), "change"))
	if err != nil {
		t.Fatal(err)
	}
	poll("the version in force now", `document.getElementById("point").textContent.startsWith("Version 1,") && document.querySelectorAll("#files tbody tr[data-path]").length > 0`)
	if err := chromedp.Do(ctx, setField("at", time.Now().Add(-time.Hour).Format("2006-01-02T15:04:05"), "change")); err != nil {
		t.Fatal(err)
	}
	poll("no version an hour ago", `document.querySelector("#files tbody td.error") != null && document.querySelector("#files tbody td.error").textContent.includes("has no version finished by")`)
	if err := chromedp.Do(ctx, setField("version", "latest", "change")); err != nil {
		t.Fatal(err)
	}

	// A file that cannot be written (a directory holds its name) is listed
	// with the reason, and the rest of the restore is done.
	blocked := filepath.Join(root, "blocked")
	if err := os.MkdirAll(filepath.Join(blocked, src, "in-the-way"), 0o755); err != nil {
		t.Fatal(err)
	}
	state := restoreInto("pc-acme-1", blocked, "overwrite")
	if !strings.Contains(state, "1 failed") || !strings.Contains(state, src) {
		t.Errorf("a restore whose file cannot be written shows:\n%s\nwant it done with the file listed as failed, and why", state)
	}
	if hidden, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById("restore-failures").hidden`)); hidden {
		t.Error("the failures table is hidden")
	}
	shot("portal-restore-failed.png")

	// The audit log has the restores, the enrolment page a token to paste,
	// the users page its users.
	base := "https://" + v.portal
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/audit"), chromedp.WaitVisible(chromedp.ID("audit"))); err != nil {
		t.Fatal(err)
	}
	audit, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("audit")))
	for _, want := range []string{"POST /api/v1/restores", "onto pc-acme-2", "keep-both", "operator admin", "it@acme.example", "POST /login"} {
		if !strings.Contains(audit, want) {
			t.Errorf("the audit page lacks %q:\n%s", want, audit)
		}
	}
	if strings.Contains(audit, "/v1/sessions") || strings.Contains(audit, "/v1/chunks") {
		t.Errorf("the audit page records an agent's backups or chunk reads:\n%s", audit)
	}
	shot("portal-audit.png")
	if out := v.mustCtl("contact", "pc-acme-2", "ops@acme.example"); !strings.Contains(out, "ops@acme.example") {
		t.Errorf("vaultctl contact: %s", out)
	}
	if out := v.mustCtl("audit", "-n", "5", "restores"); !strings.Contains(out, "onto pc-acme-2") || !strings.Contains(out, "operator admin") {
		t.Errorf("vaultctl audit restores:\n%s", out)
	}
	err = chromedp.Do(ctx, chromedp.Navigate(base+"/tokens"), chromedp.WaitVisible(chromedp.ID("token-create")),
		setField("token-company", "acme", "change"), chromedp.Click(chromedp.ID("token-create")), chromedp.WaitVisible(chromedp.ID("install")))
	if err != nil {
		t.Fatal(err)
	}
	install, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("install")))
	if !strings.Contains(install, "vault-agent -state /var/lib/vault-agent enroll -vault 127.0.0.1:") || !strings.Contains(install, " -token ") {
		t.Errorf("the install command: %q", install)
	}
	shot("portal-enrol.png")
	// Invite a user of acme who may restore pc-acme-1 only.
	err = chromedp.Do(ctx, chromedp.Navigate(base+"/users"), chromedp.WaitVisible(chromedp.ID("user-list")),
		chromedp.SendKeys(chromedp.ID("user-name"), "dave"), chromedp.SendKeys(chromedp.ID("user-company"), "acme"),
		chromedp.Click(chromedp.CSS(`input[name=cap][value=restore]`)), chromedp.Click(chromedp.ID("user-limited")),
		chromedp.Evaluate[chromedp.Void](`Array.from(document.getElementById("user-computers").options).forEach(o => o.selected = o.text.startsWith("pc-acme-1"))`),
		chromedp.Click(chromedp.ID("user-invite")))
	if err != nil {
		t.Fatal(err)
	}
	poll("dave is invited", `document.getElementById("user-out").textContent.includes("One-time password")`)
	dave := ""
	for _, l := range strings.Split(v.mustCtl("user", "list"), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[0] == "dave" {
			dave = strings.Join(f[:5], " ")
		}
	}
	if want := "dave user acme view,restore " + acme1; dave != want {
		t.Errorf("after inviting dave from the page, vaultctl user list has %q, want %q", dave, want)
	}
	shot("portal-users.png")
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/computers"), chromedp.WaitVisible(chromedp.ID("computers"))); err != nil {
		t.Fatal(err)
	}
}
