package vault

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// commandRoutesTested are the portal routes TestPortalCommandMatrix covers
// (TestPortalAuthorizationMatrix counts them as covered).
var commandRoutesTested = []string{
	"POST " + PortalAPI + "computers/{computer}/browse",
	"POST " + PortalAPI + "computers/{computer}/backup-now",
	"POST " + PortalAPI + "computers/{computer}/compare",
	"GET " + PortalAPI + "computers/{computer}/commands",
	"GET " + PortalAPI + "computers/{computer}/commands/{id}",
	"GET " + PortalAPI + "computers/{computer}/configs",
	"PUT " + PortalAPI + "computers/{computer}/configs/{name}",
	"DELETE " + PortalAPI + "computers/{computer}/configs/{name}",
	"PUT " + PortalAPI + "computers/{computer}/bandwidth",
	"GET /computers/{computer}/configure",
}

// TestPortalCommandMatrix sends every route of the command channel and of
// configurations from a user holding each capability (all of acme's
// computers, or only pc-a1), operators and no session, on an assigned
// computer, an unassigned one and another company's, each expecting its
// documented answer (docs/api.md): no session 401; without the route's
// capability 403; outside the scope 404 (before the capability of the
// command's kind); browsing, and reading a browse back, needs
// configure_backup, never restore or plain view.
func TestPortalCommandMatrix(t *testing.T) {
	pv := servePortal(t)
	pv.cmds.maxComputer, pv.cmds.maxCompany = 1<<20, 1<<20 // no agent takes them here
	type who struct {
		name    string
		kind    string
		caps    []string
		limited bool
	}
	var whos []who
	for _, c := range userCaps {
		whos = append(whos, who{"all-" + string(c), catalog.UserCompany, []string{string(c)}, false})
		whos = append(whos, who{"one-" + string(c), catalog.UserCompany, []string{string(c)}, true})
	}
	whos = append(whos, who{"op-all", catalog.UserOperator, capNames(operatorCaps), false}, who{"op-view", catalog.UserOperator, nil, false})
	for _, w := range whos {
		req := UserRequest{Name: w.name, Kind: w.kind, Caps: w.caps, Limited: w.limited}
		if w.kind == catalog.UserCompany {
			req.Company = "acme"
			if w.limited {
				req.Computers = []string{"pc-a1"}
			}
		}
		pv.addUser(t, req)
	}
	// A browse command on each computer, to read back.
	ids := map[string]string{}
	for _, c := range []string{"pc-a1", "pc-a2", "pc-g1"} {
		cv, err := pv.Enqueue(t.Context(), operator, c, browseCmd("/"))
		if err != nil {
			t.Fatal(err)
		}
		ids[c] = cv.ID
	}
	type call struct {
		route, method, path string
		body                any
	}
	calls := func(c string) []call {
		b := PortalAPI + "computers/" + c + "/"
		return []call{
			{"POST " + PortalAPI + "computers/{computer}/browse", "POST", b + "browse?wait=0", wire.BrowseArgs{Path: "/etc"}},
			{"POST " + PortalAPI + "computers/{computer}/backup-now", "POST", b + "backup-now", wire.BackupArgs{Config: "home"}},
			{"POST " + PortalAPI + "computers/{computer}/compare", "POST", b + "compare", wire.CompareArgs{Config: "home"}},
			{"GET " + PortalAPI + "computers/{computer}/commands", "GET", b + "commands", nil},
			{"GET " + PortalAPI + "computers/{computer}/commands/{id}", "GET", b + "commands/" + ids[c], nil},
			{"GET " + PortalAPI + "computers/{computer}/configs", "GET", b + "configs", nil},
			{"PUT " + PortalAPI + "computers/{computer}/configs/{name}", "PUT", b + "configs/wizard", wire.Config{Kind: wire.KindFiles, Paths: []string{"/srv"}}},
			{"DELETE " + PortalAPI + "computers/{computer}/configs/{name}", "DELETE", b + "configs/wizard", nil},
			{"PUT " + PortalAPI + "computers/{computer}/bandwidth", "PUT", b + "bandwidth", wire.Settings{Bandwidth: "10Mbit/s"}},
			{"GET /computers/{computer}/configure", "GET", "/computers/" + c + "/configure", nil},
		}
	}
	covered := map[string]bool{}
	for i := range append(whos, who{}) {
		var w *who
		b := pv.browser(t)
		label := "no session"
		if i < len(whos) {
			w = &whos[i]
			label = w.name
			if st, code := b.login(w.name, "password-of-"+w.name); st != 200 {
				t.Fatalf("%s cannot sign in: %d %s", w.name, st, code)
			}
		}
		for _, c := range []string{"pc-a1", "pc-a2", "pc-g1"} {
			for _, cl := range calls(c) {
				covered[cl.route] = true
				status, code := 200, ""
				page := strings.HasPrefix(cl.route, "GET /computers")
				has := func(cp Capability) bool {
					return cp == CapView || slices.Contains(w.caps, string(cp))
				}
				switch {
				case w == nil && page:
					status = 303
				case w == nil:
					status, code = 401, CodeSignedOut
				case !has(routeCaps[cl.route]):
					status, code = 403, wire.CodeForbidden
				case w.kind == catalog.UserCompany && (c == "pc-g1" || w.limited && c == "pc-a2"):
					status, code = 404, wire.CodeNotFound
				case strings.Contains(cl.route, "{id}") && !has(CapConfigure):
					status, code = 403, wire.CodeForbidden // a browse command, read back without configure_backup
				}
				if page && code != "" {
					code = "" // pages answer in HTML
				}
				st, gotCode, out := b.do(cl.method, cl.path, cl.body)
				if st != status || gotCode != code {
					t.Errorf("%s: %s %s: got %d %q %.200s; want %d %q", label, cl.method, cl.path, st, gotCode, out, status, code)
				}
				if st == 200 && cl.route == "GET "+PortalAPI+"computers/{computer}/commands" {
					var list []CommandView
					json.Unmarshal(out, &list)
					p := &Principal{Caps: []Capability{CapView}}
					for _, c := range w.caps {
						p.Caps = append(p.Caps, Capability(c))
					}
					for _, cv := range list {
						if !mayCommand(p, cv.Kind) {
							t.Errorf("%s: the list of %s shows a %s command", label, c, cv.Kind)
						}
					}
				}
			}
		}
	}
	for _, r := range commandRoutesTested {
		if !covered[r] {
			t.Errorf("route %s is listed as tested here but is not", r)
		}
	}
}
