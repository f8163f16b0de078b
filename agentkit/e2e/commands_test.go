package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"vaultnode/internal/wire"
)

// portalClient speaks the portal's JSON API (docs/api.md) as a signed-in
// user.
type portalClient struct {
	t    testing.TB
	base string
	c    *http.Client
	csrf string
}

func newPortalClient(t testing.TB, addr, user, password string) *portalClient {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	pc := &portalClient{t: t, base: "https://" + addr, c: &http.Client{Jar: jar, Timeout: time.Minute,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}}
	var out struct {
		CSRF string `json:"csrf_token"`
	}
	if st := pc.call("POST", "/api/v1/login", map[string]string{"user": user, "password": password}, &out); st != 200 {
		t.Fatalf("sign in as %s: %d", user, st)
	}
	pc.csrf = out.CSRF
	return pc
}

// call sends a JSON request and decodes a 200 answer into out; it returns
// the status.
func (pc *portalClient) call(method, path string, in, out any) int {
	pc.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, pc.base+path, body)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-CSRF-Token", pc.csrf)
	resp, err := pc.c.Do(req)
	if err != nil {
		pc.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		pc.t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
		return resp.StatusCode
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			pc.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

// command is a command as the portal shows it.
type command struct {
	ID       string                `json:"id"`
	Kind     string                `json:"kind"`
	State    string                `json:"state"`
	Attempt  int                   `json:"attempt"`
	Result   *wire.CommandResult   `json:"result"`
	Progress *wire.CommandProgress `json:"progress"`
}

func (pc *portalClient) must(method, path string, in any) command {
	pc.t.Helper()
	var c command
	if st := pc.call(method, path, in, &c); st != 200 {
		pc.t.Fatalf("%s %s: %d", method, path, st)
	}
	return c
}

// finished follows a command until it has finished (at most 90 s).
func (pc *portalClient) finished(computer, id string) command {
	pc.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		c := pc.must("GET", fmt.Sprintf("/api/v1/computers/%s/commands/%s?wait=20", computer, id), nil)
		if c.State != wire.CmdQueued && c.State != wire.CmdRunning {
			return c
		}
		if time.Now().After(deadline) {
			pc.t.Fatalf("command %s is still %s after 90 s", id, c.State)
		}
	}
}

// nudged waits until every config_changed command of computer has
// finished.
func (pc *portalClient) nudged(computer string) {
	pc.t.Helper()
	var list []command
	pc.call("GET", "/api/v1/computers/"+computer+"/commands", nil, &list)
	for _, c := range list {
		if c.Kind == wire.CmdConfigChanged {
			if c = pc.finished(computer, c.ID); c.State != wire.CmdDone {
				pc.t.Fatalf("config_changed: %+v", c)
			}
		}
	}
}

// portalEnv is a vault with its portal, a company user who may configure
// and restore, and an enrolled agent (its daemon not started).
type portalEnv struct {
	*env
	portal string
	pc     *portalClient
}

func newPortalEnv(t *testing.T) *portalEnv {
	t.Helper()
	root := t.TempDir()
	e := &env{t: t, root: root, src: filepath.Join(root, "src")}
	if err := os.MkdirAll(e.src, 0o755); err != nil {
		t.Fatal(err)
	}
	portal := freeAddr(t)
	e.v = startVaultPortal(t, filepath.Join(root, "vault"), portal)
	e.v.mustCtl("company", "create", "acme")
	e.a = &agent{t: t, state: filepath.Join(root, "agent")}
	f := strings.Fields(e.a.must("enroll", "-vault", e.v.addr, "-token", e.v.token("acme"), "-name", "pc1"))
	e.comp = f[2]
	cmd := exec.Command(filepath.Join(binDir, "vaultctl"), "-data", e.v.dir, "user", "add", "cfg", "-company", "acme",
		"-caps", "view,configure_backup,restore", "-password-stdin")
	cmd.Stdin = strings.NewReader("cfg's long password\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vaultctl user add: %v\n%s", err, out)
	}
	return &portalEnv{env: e, portal: portal, pc: newPortalClient(t, portal, "cfg", "cfg's long password")}
}

// startDaemonArgs starts `vault-agent run` with args after "run".
func startDaemonArgs(t *testing.T, a *agent, args ...string) *daemonProc {
	t.Helper()
	d := &daemonProc{log: &syncBuffer{}}
	d.cmd = exec.Command(filepath.Join(binDir, "vault-agent"), append([]string{"-state", a.state, "-v", "run"}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		d.cmd.Wait()
		if t.Failed() {
			t.Logf("agent daemon log:\n%s", d.log.String())
		}
	})
	return d
}

func (d *daemonProc) kill() {
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()
}

// TestCommandChannel runs the command channel between a real vaultd and a
// real `vault-agent run` whose own poll is an hour, so whatever it does
// within the test came through the channel: the portal browses the live
// tree, saves a configuration the agent takes at once, backs up now and
// compares; a command queued while the agent is away survives a SIGKILL of
// vaultd; a command the agent was running when it was killed is delivered
// again to the next agent process.
func TestCommandChannel(t *testing.T) {
	pe := newPortalEnv(t)
	pc, comp := pe.pc, pe.comp
	api := "/api/v1/computers/" + comp + "/"
	g := newGen(t, pe.src, 3)
	g.makeTree(20, 1<<20)
	d := startDaemonArgs(t, pe.a, "-poll", "1h")

	// Browse: the roots, then one level of the source tree.
	roots := pc.must("POST", api+"browse", wire.BrowseArgs{Path: ""})
	if roots.State != wire.CmdDone || roots.Result.Browse == nil || !slices.ContainsFunc(roots.Result.Browse.Entries, func(e wire.BrowseEntry) bool { return e.Name == "/" }) {
		t.Fatalf("browse the roots: %+v", roots)
	}
	level := pc.must("POST", api+"browse", wire.BrowseArgs{Path: pe.src})
	if level.State != wire.CmdDone {
		t.Fatalf("browse %s: %+v", pe.src, level)
	}
	got := map[string]wire.BrowseEntry{}
	for _, e := range level.Result.Browse.Entries {
		got[e.Name] = e
	}
	want, _ := os.ReadDir(pe.src)
	if len(got) != len(want) {
		t.Errorf("browse %s: %d entries, want %d", pe.src, len(got), len(want))
	}
	if e := got["big"]; e.Type != "dir" {
		t.Errorf("browse: big is %+v, want a directory", e)
	}
	if e := got["empty.txt"]; e.Type != "file" || e.Size != 0 {
		t.Errorf("browse: empty.txt is %+v", e)
	}
	if e := got["links"]; e.Type != "dir" {
		t.Errorf("browse: links is %+v", e)
	}
	bad := pc.must("POST", api+"browse", wire.BrowseArgs{Path: filepath.Join(pe.src, "no-such-dir")})
	if bad.State != wire.CmdFailed || !strings.Contains(bad.Result.Error, "no such file") {
		t.Errorf("browse a missing directory: %+v", bad.Result)
	}

	// A configuration saved on the portal: the agent (poll 1h) takes it
	// at once through the channel's nudge; back up now runs it.
	var cfg wire.Config
	if st := pc.call("PUT", api+"configs/home", wire.Config{Kind: wire.KindFiles, Paths: []string{pe.src}, Schedule: "mon 00:00-00:01"}, &cfg); st != 200 {
		t.Fatalf("save a configuration: %d", st)
	}
	// A 24x7 configuration runs by itself once the agent has it: within
	// the test only through the nudge (its own poll is an hour).
	if st := pc.call("PUT", api+"configs/auto", wire.Config{Kind: wire.KindFiles, Paths: []string{filepath.Join(pe.src, "docs")}}, &cfg); st != 200 {
		t.Fatalf("save a configuration: %d", st)
	}
	for start := time.Now(); !strings.Contains(pe.a.run("versions", "auto").stdout, "auto@1"); time.Sleep(200 * time.Millisecond) {
		if time.Since(start) > 60*time.Second {
			t.Fatal("the agent did not take a configuration saved on the portal within 60 s (its own poll is 1h)")
		}
	}
	bk := pc.must("POST", api+"backup-now", wire.BackupArgs{Config: "home"})
	bk = pc.finished(comp, bk.ID)
	if bk.State != wire.CmdDone || bk.Result.Backup == nil || bk.Result.Backup.Seq != 1 || bk.Result.Files == 0 {
		t.Fatalf("back up now: %+v %+v", bk, bk.Result)
	}
	if r := pe.a.run("diff", "home@1", pe.src); r.code != 0 || !strings.Contains(r.stdout, "no difference") {
		t.Errorf("vault-agent diff home@1 %s (the original directory): %s", pe.src, r)
	}

	// Compare with the live files after a change of each kind.
	g.write("added.txt", []byte("new"), 0o644)
	g.write("docs/d00/f000.txt", []byte("changed"), 0o644)
	if err := os.Remove(filepath.Join(pe.src, "empty.txt")); err != nil {
		t.Fatal(err)
	}
	cmp := pc.finished(comp, pc.must("POST", api+"compare", wire.CompareArgs{Config: "home"}).ID)
	if cmp.State != wire.CmdDone || cmp.Result.Compare == nil {
		t.Fatalf("compare: %+v", cmp)
	}
	c := cmp.Result.Compare
	if !slices.Contains(c.Added, filepath.Join(pe.src, "added.txt")) || !slices.Contains(c.Changed, filepath.Join(pe.src, "docs/d00/f000.txt")) ||
		!slices.Contains(c.Removed, filepath.Join(pe.src, "empty.txt")) {
		t.Errorf("compare: added %v, changed %v, removed %v", c.Added, c.Changed, c.Removed)
	}
	if r := pe.a.run("diff", "home@1", pe.src); r.code != 3 || !strings.Contains(r.stdout, "/empty.txt: missing") {
		t.Errorf("vault-agent diff after changes: %s", r)
	}

	// A command queued while the agent is away survives SIGKILL of vaultd.
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
	queued := pc.must("POST", api+"browse?wait=0", wire.BrowseArgs{Path: pe.src})
	if queued.State != wire.CmdQueued {
		t.Fatalf("with no agent, the browse is %s", queued.State)
	}
	pe.v.kill()
	pe.v.start()
	pc = newPortalClient(t, pe.portal, "cfg", "cfg's long password")
	d = startDaemonArgs(t, pe.a, "-poll", "1h")
	if c := pc.finished(comp, queued.ID); c.State != wire.CmdDone || c.Attempt != 1 || c.Result.Browse == nil {
		t.Fatalf("the command queued before vaultd's SIGKILL: %+v", c)
	}

	// The agent killed while it runs a command: the next agent process
	// gets it again. The upload limit (taken at once through the nudge)
	// makes the backup last a moment.
	var settings wire.Settings
	if st := pc.call("PUT", api+"bandwidth", wire.Settings{Bandwidth: "16Mbit/s"}, &settings); st != 200 {
		t.Fatalf("set the bandwidth: %d", st)
	}
	pc.nudged(comp)
	g.write("big/more.bin", g.random(4<<20), 0o644)
	bk = pc.must("POST", api+"backup-now", wire.BackupArgs{Config: "home"})
	for {
		c := pc.must("GET", api+"commands/"+bk.ID+"?wait=1", nil)
		if c.State == wire.CmdRunning {
			break
		}
		if c.State != wire.CmdQueued {
			t.Fatalf("back up now: %+v", c)
		}
	}
	d.kill()
	startDaemonArgs(t, pe.a, "-poll", "1h")
	bk = pc.finished(comp, bk.ID)
	if bk.State != wire.CmdDone || bk.Attempt != 2 || bk.Result.Backup == nil || bk.Result.Backup.Seq < 2 {
		t.Fatalf("back up now, delivered again after the agent's SIGKILL: %+v %+v", bk, bk.Result)
	}
}
