package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestPairPortalBrowser: the operator's Appliance page of a pair's
// leader, in Debian's chromium: the pair section names this member, the
// leader, the term and log index, and every member with its role and lag;
// with the witness killed, the page says it does not answer. A screenshot
// goes to out/portal/portal-appliance.png.
func TestPairPortalBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (.ci/run installs it): apt-get install chromium")
	}
	portal := freeAddr(t)
	p := newPairWith(t, nil, "-portal", portal)
	var password string
	for _, l := range p.a.banner {
		if _, after, ok := strings.Cut(l, "one-time password "); ok {
			password = strings.Fields(after)[0]
		}
	}
	if password == "" {
		t.Fatalf("a's first start printed no one-time password:\n%s", strings.Join(p.a.banner, "\n"))
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
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/login"), chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.SendKeys(chromedp.ID("user"), "admin"),
		chromedp.SendKeys(chromedp.ID("password"), password),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("must-change")),
		chromedp.SendKeys(chromedp.ID("current"), password),
		chromedp.SendKeys(chromedp.ID("new"), password+" of my own"),
		chromedp.Click(chromedp.ID("change")),
		chromedp.WaitVisible(chromedp.ID("account-done")),
		chromedp.Navigate(base+"/computers"), chromedp.WaitVisible(chromedp.ID("nav-appliance")),
		chromedp.Click(chromedp.ID("nav-appliance")),
		chromedp.WaitVisible(chromedp.ID("pair-members")))
	if err != nil {
		t.Fatalf("sign in and open the Appliance page: %v", err)
	}
	summary, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("pair-summary")))
	if err != nil {
		t.Fatal(err)
	}
	// a leads, unless a loaded machine made it miss a heartbeat since.
	st, _ := p.a.pairStatus()
	for _, want := range []string{"pair member a, " + st.State, "Leader: " + st.Leader, "term ", "log index "} {
		if !strings.Contains(summary, want) {
			t.Errorf("the pair summary lacks %q: %q", want, summary)
		}
	}
	row := func(id string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#pair-members tr[data-member="`+id+`"]`)))
		if err != nil {
			t.Fatalf("member %s's row: %v", id, err)
		}
		return strings.Join(strings.Fields(s), " ")
	}
	for id, want := range map[string][]string{
		"a": {"data", "yes", p.a.addr, "this member"},
		"b": {"data", "yes", p.b.addr, "reachable"},
		"w": {"witness", "yes", "reachable"},
	} {
		got := row(id)
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("member %s's row %q lacks %q", id, got, w)
			}
		}
	}
	if got := row(st.Leader); !strings.Contains(got, st.Leader+" (leader)") {
		t.Errorf("the leader's row %q does not say it leads", got)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	saveScreenshot(t, "portal-appliance.png", png)

	p.w.kill()
	if err := chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("pair-members"))); err != nil {
		t.Fatal(err)
	}
	if got := row("w"); !strings.Contains(got, "unreachable") {
		t.Errorf("the dead witness's row: %q", got)
	}
}
