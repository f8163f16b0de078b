package e2e

import (
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
	// Two companies, a computer each, backed up once.
	for _, c := range []struct{ company, name string }{{"acme", "pc-acme-1"}, {"globex", "pc-globex-1"}} {
		v.mustCtl("company", "create", c.company)
		src := filepath.Join(root, c.name)
		g := newGen(t, src, 7)
		g.makeTree(30, 1)
		a := &agent{t: t, state: filepath.Join(root, c.name+"-agent")}
		a.must("enroll", "-vault", v.addr, "-token", v.token(c.company), "-name", c.name)
		a.must("config", "set", "home", "-path", src)
		a.backup("home")
	}
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
	ctx, cancelT := context.WithTimeout(ctx, 40*time.Second)
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
// and to docs/ when VAULTNODE_SCREENSHOTS=docs (the README's picture).
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
	if os.Getenv("VAULTNODE_SCREENSHOTS") == "docs" {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
