package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binDir holds vaultd, vaultctl and vault-agent built by TestMain.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vaultnode-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	args := []string{"build", "-o", dir + "/"}
	env := os.Environ()
	if os.Getenv("E2E_RACE") != "" {
		args = append(args, "-race") // slower processes; the crash test's tree takes longer
	} else {
		env = append(env, "CGO_ENABLED=0")
	}
	args = append(args, "vaultnode/appliance/cmd/vaultd", "vaultnode/appliance/cmd/vaultctl", "vaultnode/agentkit/cmd/vault-agent",
		"vaultnode/scripts/smtpsink") // the SMTP server of the mail tests
	cmd := exec.Command("go", args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build the binaries:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is what a command did.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// runCmd runs one of the built binaries to its end (generous deadline).
func runCmd(t testing.TB, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, name), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run %s %v: %v", name, args, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

// freeAddr picks a loopback address nobody listens on; the vault keeps it
// across restarts because agents remember it.
func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// vaultProc is a running vaultd.
type vaultProc struct {
	t    testing.TB
	dir  string
	addr string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
	// portal is vaultd's -portal; banner is what vaultd printed up to serving (the portal's
	// address, a first operator's one-time password).
	portal string
	banner []string
	env    []string // extra environment of the next start (VAULTNODE_CLOCK_SKEW=25h, say)
	// args replace the default arguments (pair members, witnesses:
	// pair_test.go); ready is the banner line that says it serves.
	args  []string
	ready string
	// prefix runs vaultd through another command (ip netns exec NS).
	prefix []string
}

func startVault(t testing.TB, dir string) *vaultProc {
	t.Helper()
	return startVaultPortal(t, dir, "off")
}

// startVaultPortal starts a vault serving the portal on portal ("off": none).
func startVaultPortal(t testing.TB, dir, portal string) *vaultProc {
	t.Helper()
	return startVaultWith(t, dir, portal, nil, "")
}

// startVaultWith starts vaultd with args (nil: a single vault serving the
// portal on portal), ready when it prints the line ready.
func startVaultWith(t testing.TB, dir, portal string, args func(addr string) []string, ready string) *vaultProc {
	t.Helper()
	logf, err := os.Create(filepath.Join(filepath.Dir(dir), filepath.Base(dir)+"-vaultd.log"))
	if err != nil {
		t.Fatal(err)
	}
	v := &vaultProc{t: t, dir: dir, addr: freeAddr(t), log: logf, portal: portal}
	if args != nil {
		v.args, v.ready = args(v.addr), ready
	}
	v.start()
	t.Cleanup(func() {
		v.kill()
		logf.Close()
		if b, _ := os.ReadFile(logf.Name()); bytes.Contains(b, []byte("DATA RACE")) {
			t.Errorf("vaultd (built with E2E_RACE=1) reported a data race:\n%s", b)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("vaultd log (tail):\n%s", b)
		}
	})
	return v
}

// start runs vaultd and waits until it serves. A restart whose address
// is taken for a moment is tried again: a member dialing the dead one's
// port from an ephemeral port that happens to be that port holds it
// briefly (TCP self-connect, which Go's dialer then drops).
func (v *vaultProc) start() {
	v.t.Helper()
	for i := 0; ; i++ {
		if v.tryStart(i < 5) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (v *vaultProc) tryStart(retry bool) bool {
	v.t.Helper()
	off, _ := v.log.Seek(0, io.SeekCurrent)
	args, readyLine := []string{"-data", v.dir, "-listen", v.addr, "-portal", v.portal}, "serving agents on"
	if v.args != nil {
		args, readyLine = v.args, v.ready
	}
	cmd := exec.Command(filepath.Join(binDir, "vaultd"), args...)
	if len(v.prefix) > 0 {
		cmd = exec.Command(v.prefix[0], append(append(v.prefix[1:], filepath.Join(binDir, "vaultd")), args...)...)
	}
	cmd.Env = append(os.Environ(), v.env...)
	cmd.Stderr = v.log
	out, err := cmd.StdoutPipe()
	if err != nil {
		v.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		v.t.Fatal(err)
	}
	ready := make(chan []string, 1)
	go func() { // ends when vaultd closes stdout (exits)
		sc := bufio.NewScanner(out)
		var banner []string
		for sc.Scan() {
			banner = append(banner, sc.Text())
			if strings.Contains(sc.Text(), readyLine) {
				select {
				case ready <- banner:
				default:
				}
			}
		}
	}()
	done := make(chan struct{})
	go func() { // owner: the process's life
		err := cmd.Wait()
		// Say in the log how it ended: a vaultd that dies on its own
		// (not by kill or stop) may have printed nothing.
		fmt.Fprintf(v.log, "e2e harness: vaultd (pid %d) ended: %v\n", cmd.Process.Pid, exitOf(err, cmd))
		close(done)
	}()
	v.cmd, v.done = cmd, done
	select {
	case v.banner = <-ready:
	case <-done:
		b, _ := os.ReadFile(v.log.Name())
		if retry && int64(len(b)) >= off && bytes.Contains(b[off:], []byte("address already in use")) {
			v.cmd = nil
			return false
		}
		v.t.Fatalf("vaultd exited before serving:\n%s", b)
	case <-time.After(60 * time.Second):
		v.kill()
		v.t.Fatal("vaultd did not serve within 60s")
	}
	return true
}

// exitOf says how a process ended: its exit code or the signal that
// killed it.
func exitOf(err error, cmd *exec.Cmd) string {
	if cmd.ProcessState == nil {
		return fmt.Sprintf("wait: %v", err)
	}
	return cmd.ProcessState.String()
}

// exited reports whether the running vaultd ended on its own (not by
// kill or stop).
func (v *vaultProc) exited() bool {
	if v.cmd == nil {
		return false
	}
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// kill SIGKILLs vaultd and waits for it.
func (v *vaultProc) kill() {
	if v.cmd == nil {
		return
	}
	v.cmd.Process.Signal(syscall.SIGKILL)
	<-v.done
	v.cmd = nil
}

// stop shuts vaultd down cleanly.
func (v *vaultProc) stop() {
	if v.cmd == nil {
		return
	}
	v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.done:
	case <-time.After(30 * time.Second):
		v.t.Error("vaultd did not stop within 30s of SIGTERM")
	}
	v.kill()
}

func (v *vaultProc) ctl(args ...string) result {
	v.t.Helper()
	return runCmd(v.t, "vaultctl", append([]string{"-data", v.dir}, args...)...)
}

func (v *vaultProc) mustCtl(args ...string) string {
	v.t.Helper()
	r := v.ctl(args...)
	if r.code != 0 {
		v.t.Fatalf("vaultctl %v: %s", args, r)
	}
	return r.stdout
}

func (v *vaultProc) token(company string) string {
	v.t.Helper()
	return strings.TrimSpace(v.mustCtl("token", "create", company))
}

// agent is a vault-agent state directory.
type agent struct {
	t     testing.TB
	state string
}

func (a *agent) run(args ...string) result {
	a.t.Helper()
	return runCmd(a.t, "vault-agent", append([]string{"-state", a.state}, args...)...)
}

func (a *agent) must(args ...string) string {
	a.t.Helper()
	r := a.run(args...)
	if r.code != 0 {
		a.t.Fatalf("vault-agent %v: %s", args, r)
	}
	return r.stdout
}

// summary is one line of `vault-agent backup -json`.
type summary struct {
	Config       string   `json:"config"`
	Version      uint64   `json:"version"`
	Files        int64    `json:"files"`
	Bytes        int64    `json:"bytes"`
	FilesRead    int64    `json:"files_read"`
	BytesRead    int64    `json:"bytes_read"`
	ChunksSent   int64    `json:"chunks_sent"`
	ChunksKnown  int64    `json:"chunks_known"`
	ChunksReused int64    `json:"chunks_reused"`
	BytesSent    int64    `json:"bytes_sent"`
	Deleted      int64    `json:"deleted"`
	Problems     []string `json:"problems"`
}

func (a *agent) backup(config string) summary {
	a.t.Helper()
	out := a.must("backup", "-json", config)
	var s summary
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &s); err != nil {
		a.t.Fatalf("backup -json printed %q: %v", out, err)
	}
	if len(s.Problems) > 0 {
		a.t.Fatalf("backup reported problems: %v", s.Problems)
	}
	return s
}

// env is a vault with a company and one enrolled agent protecting src.
type env struct {
	t    *testing.T
	root string
	v    *vaultProc
	a    *agent
	src  string
	comp string // computer id
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{t: t, root: root, src: filepath.Join(root, "src")}
	if err := os.MkdirAll(e.src, 0o755); err != nil {
		t.Fatal(err)
	}
	e.v = startVault(t, filepath.Join(root, "vault"))
	e.v.mustCtl("company", "create", "acme")
	e.a = &agent{t: t, state: filepath.Join(root, "agent")}
	out := e.a.must("enroll", "-vault", e.v.addr, "-token", e.v.token("acme"), "-name", "pc1")
	f := strings.Fields(out)
	if len(f) < 3 || f[0] != "enrolled" {
		t.Fatalf("enroll printed %q", out)
	}
	e.comp = f[2]
	e.a.must("config", "set", "home", "-path", e.src)
	return e
}

// restore restores CONFIG@N to a fresh directory and returns where the
// configuration's root landed.
func (e *env) restore(version uint64) (string, result) {
	e.t.Helper()
	to := filepath.Join(e.root, fmt.Sprintf("restore-%d-%d", version, time.Now().UnixNano()))
	// -setid: the corpus holds a setgid file, which restore keeps only
	// when asked (the e2e tests run as root).
	r := e.a.run("restore", fmt.Sprintf("home@%d", version), "-to", to, "-setid")
	return filepath.Join(to, e.src), r
}

// entryState is what the tests compare of one filesystem object.
type entryState struct {
	Type   string
	Mode   fs.FileMode
	Size   int64
	Mtime  int64 // ns
	Target string
	Sum    [32]byte
	Link   string // first path of the same inode when nlink > 1
}

// snapshot records every object under root (root itself as ".").
func snapshot(t testing.TB, root string) map[string]entryState {
	t.Helper()
	out := map[string]entryState{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		s := entryState{Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), Mtime: fi.ModTime().UnixNano()}
		switch {
		case fi.Mode().IsRegular():
			s.Type, s.Size = "file", fi.Size()
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			copy(s.Sum[:], h.Sum(nil))
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					s.Link = first
				} else {
					inodes[st.Ino] = rel
				}
			}
		case fi.IsDir():
			s.Type = "dir"
		case fi.Mode()&fs.ModeSymlink != 0:
			s.Type = "symlink"
			s.Target, err = os.Readlink(p)
			if err != nil {
				return err
			}
			s.Mode = 0 // symlink permissions mean nothing on Linux
		default:
			s.Type = fi.Mode().Type().String()
		}
		out[rel] = s
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", root, err)
	}
	return out
}

// compareTrees reports every difference between want and got.
func compareTrees(t testing.TB, what string, want, got map[string]entryState) {
	t.Helper()
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: missing (want %s)", p, w.Type))
		case g.Type != w.Type:
			diffs = append(diffs, fmt.Sprintf("%s: type %s, want %s", p, g.Type, w.Type))
		case g.Sum != w.Sum || g.Size != w.Size:
			diffs = append(diffs, fmt.Sprintf("%s: content differs (size %d, want %d)", p, g.Size, w.Size))
		case g.Target != w.Target:
			diffs = append(diffs, fmt.Sprintf("%s: link target %q, want %q", p, g.Target, w.Target))
		case g.Mode != w.Mode:
			diffs = append(diffs, fmt.Sprintf("%s: mode %v, want %v", p, g.Mode, w.Mode))
		case g.Mtime != w.Mtime:
			diffs = append(diffs, fmt.Sprintf("%s (%s): mtime %s, want %s", p, w.Type, time.Unix(0, g.Mtime).UTC().Format(time.RFC3339Nano), time.Unix(0, w.Mtime).UTC().Format(time.RFC3339Nano)))
		case g.Link != w.Link:
			diffs = append(diffs, fmt.Sprintf("%s: hard link to %q, want %q", p, g.Link, w.Link))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, p+": restored but not in the version")
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 30 {
			diffs = append(diffs[:30], fmt.Sprintf("... and %d more", len(diffs)-30))
		}
		t.Errorf("%s: %d differences:\n  %s", what, len(diffs), strings.Join(diffs, "\n  "))
	}
}

// gen writes deterministic trees.
type gen struct {
	t    testing.TB
	root string
	r    *rand.Rand
}

func newGen(t testing.TB, root string, seed uint64) *gen {
	return &gen{t: t, root: root, r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (g *gen) random(n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := g.r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(g.r.Uint32())
	}
	return b
}

var words = strings.Fields("vault agent chunk pack listing version restore backup store index catalog token session commit verify sparse extent inode mode owner")

// text makes compressible content unique to name.
func (g *gen) text(name string, n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %d\n", name, g.r.Uint64())
	for b.Len() < n {
		b.WriteString(words[g.r.IntN(len(words))])
		if g.r.IntN(10) == 0 {
			b.WriteByte('\n')
		} else {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:max(n, 0)]
}

func (g *gen) write(rel string, data []byte, mode fs.FileMode) {
	g.t.Helper()
	p := filepath.Join(g.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		g.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		g.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		g.t.Fatal(err)
	}
}

func (g *gen) mkdir(rel string, mode fs.FileMode) {
	g.t.Helper()
	p := filepath.Join(g.root, rel)
	if err := os.MkdirAll(p, 0o755); err != nil {
		g.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		g.t.Fatal(err)
	}
}

func (g *gen) symlink(target, rel string) {
	g.t.Helper()
	p := filepath.Join(g.root, rel)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.Symlink(target, p); err != nil {
		g.t.Fatal(err)
	}
}

// sparse writes a file of size bytes with data only at the given offsets.
func (g *gen) sparse(rel string, size int64, data map[int64]int) {
	g.t.Helper()
	p := filepath.Join(g.root, rel)
	os.MkdirAll(filepath.Dir(p), 0o755)
	f, err := os.Create(p)
	if err != nil {
		g.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		g.t.Fatal(err)
	}
	for off, n := range data {
		if _, err := f.WriteAt(g.random(n), off); err != nil {
			g.t.Fatal(err)
		}
	}
}

// makeTree builds the standard tree: small text files in nested
// directories, a large random file, a sparse file, symlinks, a hard link,
// empty things, several modes, and nanosecond mtimes.
func (g *gen) makeTree(small int, large int) {
	g.t.Helper()
	for i := 0; i < small; i++ {
		rel := fmt.Sprintf("docs/d%02d/f%03d.txt", i%10, i)
		g.write(rel, g.text(rel, g.r.IntN(30000)), 0o644)
	}
	g.write("big/large.bin", g.random(large), 0o644)
	g.sparse("sparse/holes.img", 64<<20, map[int64]int{0: 4096, 32 << 20: 1 << 20, 64<<20 - 10000: 10000})
	g.sparse("sparse/allhole.img", 8<<20, nil)
	g.symlink("../docs/d00/f000.txt", "links/rel")
	g.symlink("/etc/hostname", "links/abs")
	g.symlink("does/not/exist", "links/dangling")
	g.symlink("../docs", "links/dir")
	g.write("deep/a/b/c/d/e/f/g/leaf.txt", g.text("leaf", 100), 0o644)
	g.mkdir("empty", 0o755)
	g.write("empty.txt", nil, 0o644)
	g.write("bin/tool.sh", []byte("#!/bin/sh\necho hi\n"), 0o755)
	g.mkdir("private", 0o700)
	g.write("private/secret", g.text("secret", 500), 0o600)
	g.write("modes/setgid-file", g.text("sg", 10), fs.ModeSetgid|0o755)
	g.write("hard/one", g.text("hard", 5000), 0o644)
	if err := os.Link(filepath.Join(g.root, "hard/one"), filepath.Join(g.root, "hard/two")); err != nil {
		g.t.Fatal(err)
	}
	g.setTimes()
}

// setTimes gives every file and directory a distinct mtime with
// nanoseconds, directories last (deepest first) so they keep theirs.
func (g *gen) setTimes() {
	g.t.Helper()
	var paths []string
	filepath.WalkDir(g.root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSymlink == 0 {
			paths = append(paths, p)
		}
		return nil
	})
	base := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC).Add(time.Duration(g.r.IntN(1000)) * time.Hour)
	for i := len(paths) - 1; i >= 0; i-- { // children before their directory
		ts := base.Add(time.Duration(i)*time.Second + time.Duration(g.r.IntN(1e9)))
		if err := os.Chtimes(paths[i], ts, ts); err != nil {
			g.t.Fatal(err)
		}
	}
}

// mutate changes the tree like a day of work: edits, an insertion in the
// middle of the large file, additions, deletions, a directory rename, a
// mode change. What it does not touch keeps its mtime.
func (g *gen) mutate(round int) {
	g.t.Helper()
	files := g.list("docs")
	for i := 0; i < 5 && len(files) > 0; i++ {
		rel := files[g.r.IntN(len(files))]
		g.write(rel, g.text(fmt.Sprintf("%s edit %d", rel, round), g.r.IntN(30000)), 0o644)
	}
	big := filepath.Join(g.root, "big/large.bin")
	if b, err := os.ReadFile(big); err == nil {
		mid := len(b) / 2
		nb := append(append(append([]byte{}, b[:mid]...), g.random(100<<10)...), b[mid:]...)
		g.write("big/large.bin", nb, 0o644)
	}
	for i := 0; i < 10; i++ {
		rel := fmt.Sprintf("docs/new%d/n%02d.txt", round, i)
		g.write(rel, g.text(rel, g.r.IntN(20000)), 0o644)
	}
	for i := 0; i < 5 && len(files) > 5; i++ {
		os.Remove(filepath.Join(g.root, files[g.r.IntN(len(files))]))
	}
	os.RemoveAll(filepath.Join(g.root, "docs/d09"))
	if err := os.Rename(filepath.Join(g.root, "docs/d01"), filepath.Join(g.root, fmt.Sprintf("docs/d01-r%d", round))); err != nil && !os.IsNotExist(err) {
		g.t.Fatal(err)
	}
	os.Chmod(filepath.Join(g.root, "private/secret"), 0o640)
}

// list returns the regular files under dir (relative to the root).
func (g *gen) list(dir string) []string {
	var out []string
	filepath.WalkDir(filepath.Join(g.root, dir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(g.root, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// dirSize sums the sizes of the files under dir.
func dirSize(t testing.TB, dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
