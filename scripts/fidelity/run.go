package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"vaultnode/agentkit/treediff"
	"vaultnode/internal/testtree"
)

// Report is what -out holds.
type Report struct {
	Time       time.Time         `json:"time"`
	Root       bool              `json:"root"`
	Cases      []string          `json:"cases"`
	Dropped    []string          `json:"dropped"`
	Tools      []ToolRun         `json:"tools"`
	Properties []PropertyResult  `json:"properties"`
	Notes      map[string]string `json:"notes"`
}

// ToolRun is one tool's backup and restore.
type ToolRun struct {
	Name         string   `json:"name"`
	Version      string   `json:"version"`
	Flags        string   `json:"flags"`
	BackupError  string   `json:"backup_error,omitempty"`
	RestoreError string   `json:"restore_error,omitempty"`
	Differences  int      `json:"differences"`
	Examples     []string `json:"examples"` // the first differences
	// SocketRecorded: the version lists the socket (vaultnode records
	// sockets but does not recreate them).
	SocketRecorded bool `json:"socket_recorded"`
	diffs          []treediff.Difference
	restored       string
}

// PropertyResult is one row of the table.
type PropertyResult struct {
	Property string            `json:"property"`
	Cases    []string          `json:"cases"`
	Fields   []string          `json:"fields"`
	Result   map[string]Status `json:"result"` // tool -> status
}

// Status is one cell.
type Status struct {
	State       string `json:"state"` // kept, lost, not tested, recorded
	Differences int    `json:"differences"`
	Example     string `json:"example,omitempty"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fidelity", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", "bin", "`directory` of vaultd, vaultctl and vault-agent (make build)")
	out := fs.String("out", "out/bench/fidelity.json", "JSON report `file`")
	resticBin := fs.String("restic", "restic", "restic `program` (installed with apt-get when missing)")
	work := fs.String("work", "", "working `directory` (default: a new temporary directory, removed unless -keep)")
	keep := fs.Bool("keep", false, "keep the working directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, p := range []string{"vaultd", "vaultctl", "vault-agent"} {
		if _, err := os.Stat(filepath.Join(*bin, p)); err != nil {
			return fmt.Errorf("%s is missing from %s: run make build first", p, *bin)
		}
	}
	rp, err := findRestic(ctx, *resticBin, stderr)
	if err != nil {
		return err
	}
	if *work == "" {
		*work, err = os.MkdirTemp("", "vaultnode-fidelity-")
		if err != nil {
			return err
		}
	}
	wd, err := filepath.Abs(*work)
	if err != nil {
		return err
	}
	if !*keep {
		defer func() {
			for _, d := range []string{"want", "src-vaultnode", "src-restic", "restore-vaultnode", "restore-restic"} {
				testtree.Unprotect(filepath.Join(wd, d))
			}
			os.RemoveAll(wd)
		}()
	} else {
		fmt.Fprintln(stderr, "fidelity: working directory", wd)
	}

	opts := testtree.Options{Unprivileged: os.Geteuid() != 0}
	if opts.Unprivileged {
		fmt.Fprintf(stderr, "fidelity: NOT ROOT: the cases %v are not made and reported as not tested\n", testtree.PrivilegedCases())
	}
	// A pristine tree to compare with, and one source tree per tool: a
	// tool that reads without O_NOATIME changes the atimes of what it reads.
	var man testtree.Manifest
	for _, d := range []string{"want", "src-vaultnode", "src-restic"} {
		man, err = testtree.Generate(filepath.Join(wd, d), opts)
		if err != nil {
			return fmt.Errorf("generate the test tree: %w", err)
		}
	}
	rep := &Report{Time: time.Now().UTC(), Root: !opts.Unprivileged, Cases: man.Made, Dropped: man.Dropped, Notes: notes()}

	vn := runVaultnode(ctx, *bin, wd, stderr)
	rs := runRestic(ctx, rp, wd, stderr)
	want := filepath.Join(wd, "want")
	for _, t := range []*ToolRun{vn, rs} {
		if t.restored == "" {
			continue
		}
		d, err := treediff.Compare(want, t.restored, treediff.Options{Atime: true, Sockets: true, SkipRoot: true})
		if err != nil {
			return fmt.Errorf("compare the %s restore: %w", t.Name, err)
		}
		t.diffs, t.Differences = d, len(d)
		for i, x := range d {
			if i == 20 {
				break
			}
			t.Examples = append(t.Examples, shorten(x.String()))
		}
		rep.Tools = append(rep.Tools, *t)
	}
	for _, p := range properties {
		pr := PropertyResult{Property: p.name, Cases: p.cases, Fields: p.fields, Result: map[string]Status{}}
		for _, t := range []*ToolRun{vn, rs} {
			pr.Result[t.Name] = judge(p, t, man)
		}
		rep.Properties = append(rep.Properties, pr)
	}

	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	printTable(stdout, rep, vn, rs)
	fmt.Fprintf(stdout, "\ndetails: %s\n", *out)
	return nil
}

// property is one row: the differences that count against it are those
// with one of fields (any field if empty) under one of cases (anywhere if
// empty).
type property struct {
	name   string
	cases  []string
	fields []string
	except []string // cases not counted
}

var properties = []property{
	{"content of regular files", []string{testtree.CaseRegular, testtree.CaseLarge}, []string{"missing", "type", "size", "content", "error"}, nil},
	{"sparse files: content", []string{testtree.CaseSparse}, []string{"missing", "type", "size", "content", "error"}, nil},
	{"sparse files: holes (allocated blocks)", []string{testtree.CaseSparse}, []string{"holes", "blocks"}, nil},
	{"owner and group (numeric)", nil, []string{"owner"}, nil},
	{"mode incl. setuid, setgid, sticky", nil, []string{"mode"}, nil},
	{"mtime with nanoseconds", nil, []string{"mtime"}, nil},
	{"mtime before 1970 / after 2038", []string{testtree.CaseTimes}, []string{"mtime"}, nil},
	{"atime", nil, []string{"atime"}, nil},
	{"xattrs user.*", nil, []string{"xattr user."}, nil},
	{"xattrs trusted.*", nil, []string{"xattr trusted."}, nil},
	{"xattrs security.* (SELinux label, capabilities)", nil, []string{"xattr security."}, nil},
	{"POSIX ACLs (access and default)", nil, []string{"acl access", "acl default"}, nil},
	{"inode flags nodump, noatime", []string{testtree.CaseFlags}, []string{"flags"}, nil},
	{"inode flags immutable, append-only", []string{testtree.CaseProtect}, []string{"flags"}, nil},
	{"files under immutable flags restored", []string{testtree.CaseProtect}, []string{"missing", "content", "size", "error"}, nil},
	{"symbolic links (target bytes)", []string{testtree.CaseSymlinks}, []string{"missing", "type", "target", "error"}, nil},
	{"hard links (within and across directories)", nil, []string{"hardlink"}, nil},
	{"device nodes (char, block)", []string{testtree.CaseDevices}, []string{"missing", "type", "rdev", "error"}, nil},
	{"FIFOs", []string{testtree.CaseFIFO}, []string{"missing", "type", "error"}, nil},
	{"sockets", []string{testtree.CaseSocket}, []string{"missing", "type"}, nil},
	{"names: non-UTF-8, newlines, 255 bytes", []string{testtree.CaseNames}, nil, nil},
	{"paths deeper than PATH_MAX", []string{testtree.CaseDeep}, nil, nil},
	{"wide directory", []string{testtree.CaseWide}, nil, nil},
	{"empty directories", []string{testtree.CaseEmptyDirs}, nil, nil},
	{"restrictive modes (0000 files and dirs)", []string{testtree.CaseRestrictive}, nil, nil},
	{"foreign owners (with and without names)", []string{testtree.CaseOwners}, nil, nil},
	{"nothing missing or extra (sockets aside)", nil, []string{"missing", "extra"}, []string{testtree.CaseSocket}},
}

func (p property) matches(d treediff.Difference) bool {
	for _, c := range p.except {
		if top, _, _ := strings.Cut(string(d.Path), "/"); top == c {
			return false
		}
	}
	if len(p.cases) > 0 {
		top, _, _ := strings.Cut(string(d.Path), "/")
		ok := false
		for _, c := range p.cases {
			if top == c {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	if len(p.fields) == 0 {
		return true
	}
	for _, f := range p.fields {
		if d.Field == f || (strings.HasSuffix(f, ".") && strings.HasPrefix(d.Field, f)) {
			return true
		}
	}
	return false
}

func judge(p property, t *ToolRun, man testtree.Manifest) Status {
	for _, c := range p.cases {
		if !man.Has(c) {
			return Status{State: "not tested"}
		}
	}
	if t.restored == "" {
		return Status{State: "lost", Example: "no restore: " + t.BackupError + t.RestoreError}
	}
	var s Status
	for _, d := range t.diffs {
		if p.matches(d) {
			if s.Differences == 0 {
				s.Example = shorten(d.String())
			}
			s.Differences++
		}
	}
	switch {
	case s.Differences == 0:
		s.State = "kept"
	case p.name == "sockets" && t.SocketRecorded:
		s.State = "recorded, not recreated" // by design
	default:
		s.State = "lost"
	}
	return s
}

func printTable(w io.Writer, rep *Report, tools ...*ToolRun) {
	fmt.Fprintf(w, "Fidelity on a testtree tree (%d cases%s)\n\n", len(rep.Cases), map[bool]string{true: ", as root", false: ", NOT as root: privileged cases not tested"}[rep.Root])
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprint(tw, "PROPERTY")
	for _, t := range tools {
		fmt.Fprintf(tw, "\t%s", strings.ToUpper(t.Name))
	}
	fmt.Fprintln(tw)
	for _, p := range rep.Properties {
		fmt.Fprint(tw, p.Property)
		for _, t := range tools {
			s := p.Result[t.Name]
			cell := s.State
			if s.Differences > 0 {
				cell = fmt.Sprintf("%s (%d)", s.State, s.Differences)
			}
			fmt.Fprintf(tw, "\t%s", cell)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, t := range tools {
		fmt.Fprintf(w, "%s %s (%s): %d differences in all", t.Name, t.Version, t.Flags, t.Differences)
		if t.BackupError != "" {
			fmt.Fprintf(w, "; backup: %s", t.BackupError)
		}
		if t.RestoreError != "" {
			fmt.Fprintf(w, "; restore: %s", t.RestoreError)
		}
		fmt.Fprintln(w)
		for i, e := range t.Examples {
			if i == 8 {
				fmt.Fprintf(w, "  ... (see the JSON report)\n")
				break
			}
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
}

func notes() map[string]string {
	return map[string]string{
		"compared":     "treediff.Compare(pristine tree, restore) with atime and sockets; not comparable after any restore: ctime, birth time, inode numbers",
		"sockets":      "recorded: in the version (vault-agent ls shows it) but not recreated, since a socket is only meaningful to the process bound to it",
		"source_trees": "each tool backs up its own identical copy of the tree, so one tool's reads cannot change the atimes the other sees",
	}
}

// cmdOut runs a command to its end and returns its standard output; the
// error carries the tail of its standard error.
func cmdOut(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if err != nil {
		msg := strings.TrimSpace(e.String())
		if len(msg) > 600 {
			msg = "..." + msg[len(msg)-600:]
		}
		return o.Bytes(), fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args[:min(len(args), 2)], " "), err, shorten(msg))
	}
	return o.Bytes(), nil
}

func findRestic(ctx context.Context, name string, stderr io.Writer) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if name != "restic" {
		return "", fmt.Errorf("restic program %s not found", name)
	}
	fmt.Fprintln(stderr, "fidelity: restic is missing; installing the Debian package")
	if _, err := cmdOut(ctx, nil, "apt-get", "install", "-y", "restic"); err != nil {
		if _, err := cmdOut(ctx, nil, "apt-get", "update"); err != nil {
			return "", fmt.Errorf("install restic: %w", err)
		}
		if _, err := cmdOut(ctx, nil, "apt-get", "install", "-y", "restic"); err != nil {
			return "", fmt.Errorf("install restic: %w", err)
		}
	}
	return exec.LookPath("restic")
}

func runRestic(ctx context.Context, prog, wd string, stderr io.Writer) *ToolRun {
	t := &ToolRun{Name: "restic", Flags: "backup --with-atime; restore --sparse"}
	if v, err := cmdOut(ctx, nil, prog, "version"); err == nil {
		f := strings.Fields(string(v))
		if len(f) > 1 {
			t.Version = f[1]
		}
	}
	env := []string{"RESTIC_PASSWORD=fidelity", "RESTIC_REPOSITORY=" + filepath.Join(wd, "restic-repo"),
		"RESTIC_CACHE_DIR=" + filepath.Join(wd, "restic-cache")}
	src := filepath.Join(wd, "src-restic")
	to := filepath.Join(wd, "restore-restic")
	fmt.Fprintln(stderr, "fidelity: restic backup and restore")
	if _, err := cmdOut(ctx, env, prog, "init"); err != nil {
		t.BackupError = err.Error()
		return t
	}
	if _, err := cmdOut(ctx, env, prog, "backup", "--with-atime", src); err != nil {
		// restic exits 3 when some files could not be read: it still
		// made a snapshot
		t.BackupError = err.Error()
	}
	if _, err := cmdOut(ctx, env, prog, "restore", "--sparse", "latest", "--target", to); err != nil {
		t.RestoreError = err.Error()
	}
	if _, err := os.Lstat(filepath.Join(to, src)); err == nil {
		t.restored = filepath.Join(to, src)
	}
	return t
}

// vaultd is a running vault.
type vaultd struct {
	cmd  *exec.Cmd
	done chan struct{}
	addr string
}

func startVaultd(ctx context.Context, bin, dir string) (*vaultd, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	logf, err := os.Create(dir + "-vaultd.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(bin, "vaultd"), "-data", dir, "-listen", addr, "-portal", "off")
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start vaultd: %w", err)
	}
	v := &vaultd{cmd: cmd, done: make(chan struct{}), addr: addr}
	ready := make(chan struct{})
	go func() { // ends when vaultd exits and closes stdout
		sc := bufio.NewScanner(outp)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), "serving agents on") {
				once = true
				close(ready)
			}
		}
	}()
	go func() { cmd.Wait(); logf.Close(); close(v.done) }() // owner: the process's life
	select {
	case <-ready:
		return v, nil
	case <-v.done:
		b, _ := os.ReadFile(dir + "-vaultd.log")
		return nil, fmt.Errorf("vaultd exited before serving: %s", b)
	case <-time.After(time.Minute):
		v.stop()
		return nil, errors.New("vaultd did not serve within a minute")
	case <-ctx.Done():
		v.stop()
		return nil, ctx.Err()
	}
}

func (v *vaultd) stop() {
	v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.done:
	case <-time.After(30 * time.Second):
		v.cmd.Process.Kill()
		<-v.done
	}
}

func runVaultnode(ctx context.Context, bin, wd string, stderr io.Writer) *ToolRun {
	t := &ToolRun{Name: "vaultnode", Flags: "config set -path; backup; restore -to"}
	if b, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		t.Version = strings.TrimSpace(string(b))
	}
	fmt.Fprintln(stderr, "fidelity: vaultnode backup and restore")
	v, err := startVaultd(ctx, bin, filepath.Join(wd, "vault"))
	if err != nil {
		t.BackupError = err.Error()
		return t
	}
	defer v.stop()
	ctl := func(args ...string) ([]byte, error) {
		return cmdOut(ctx, nil, filepath.Join(bin, "vaultctl"), append([]string{"-data", filepath.Join(wd, "vault")}, args...)...)
	}
	agent := func(args ...string) ([]byte, error) {
		return cmdOut(ctx, nil, filepath.Join(bin, "vault-agent"), append([]string{"-state", filepath.Join(wd, "agent")}, args...)...)
	}
	src := filepath.Join(wd, "src-vaultnode")
	to := filepath.Join(wd, "restore-vaultnode")
	step := func() error {
		if _, err := ctl("company", "create", "fidelity"); err != nil {
			return err
		}
		var err error
		for range 5 { // a fresh token when one is called malformed (an old parsing bug)
			var tok []byte
			if tok, err = ctl("token", "create", "fidelity"); err != nil {
				return err
			}
			_, err = agent("enroll", "-vault", v.addr, "-token", strings.TrimSpace(string(tok)), "-name", "fidelity")
			if err == nil || !strings.Contains(err.Error(), "malformed") {
				break
			}
		}
		if err != nil {
			return err
		}
		_, err = agent("config", "set", "tree", "-path", src)
		return err
	}
	if err := step(); err != nil {
		t.BackupError = err.Error()
		return t
	}
	if _, err := agent("backup", "tree"); err != nil {
		t.BackupError = err.Error() // exit 3: committed with problems; restore anyway
	}
	if _, err := agent("restore", "tree@latest", "-to", to, "-devices", "-setid"); err != nil {
		t.RestoreError = err.Error()
	}
	if _, err := os.Lstat(filepath.Join(to, src)); err == nil {
		t.restored = filepath.Join(to, src)
	}
	t.SocketRecorded = vaultnodeRecordsSockets(ctx, bin, wd)
	return t
}

// shorten cuts the middle out of long lines (paths deeper than PATH_MAX).
func shorten(s string) string {
	if len(s) <= 240 {
		return s
	}
	return s[:120] + " ... " + s[len(s)-115:]
}

// vaultnodeRecordsSockets reports whether the version lists the socket
// case's socket as a socket.
func vaultnodeRecordsSockets(ctx context.Context, bin, wd string) bool {
	out, err := cmdOut(ctx, nil, filepath.Join(bin, "vault-agent"), "-state", filepath.Join(wd, "agent"), "ls", "tree@latest",
		filepath.Join(wd, "src-vaultnode", testtree.CaseSocket))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "s") {
			return true
		}
	}
	return false
}
