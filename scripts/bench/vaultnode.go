package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"vaultnode/internal/clock"
)

// vaultnode drives vaultd, vaultctl and vault-agent as README.md documents
// them. The agent reaches the vault directly; bytes sent are the vault's
// own counts of its agent connections (wirecount.go), TLS and HTTP/2
// included.
type vaultnode struct {
	bin    string // directory holding vaultd, vaultctl, vault-agent
	work   string // working directory of this tool
	corpus string // absolute path of the tree to protect
	marker string // the name of an entry of the tree, by which a restore's copy is found
	r      runner
	clk    clock.Clock

	vaultd    *exec.Cmd
	exited    chan struct{} // closed when vaultd has exited
	exitErr   error         // set before exited is closed
	addr      string        // the agent API's address
	hwmReset  bool          // resetting the vault's peak RSS works
	hwmWarned bool
	// setupNotes are reported with the first phase.
	setupNotes []string
}

func (t *vaultnode) Name() string            { return "vaultnode" }
func (t *vaultnode) StoreDir() string        { return filepath.Join(t.work, "vault") }
func (t *vaultnode) stateDir() string        { return filepath.Join(t.work, "agent") }
func (t *vaultnode) logFile() string         { return filepath.Join(t.work, "vaultnode.log") }
func (t *vaultnode) SentIsStoreGrowth() bool { return false }
func (t *vaultnode) prog(name string) string { return filepath.Join(t.bin, name) }
func (t *vaultnode) agent(args ...string) []string {
	return append([]string{"-state", t.stateDir()}, args...)
}

func (t *vaultnode) Setup(ctx context.Context) error {
	for _, d := range []string{t.work, t.StoreDir(), t.stateDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("set up vaultnode: %w", err)
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	logf, err := os.Create(filepath.Join(t.work, "vaultd.log"))
	if err != nil {
		return fmt.Errorf("set up vaultnode: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(t.prog("vaultd"), "-data", t.StoreDir(), "-listen", listen, "-portal", "off")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start vaultd: %w", err)
	}
	t.vaultd = cmd
	t.exited = make(chan struct{})
	go func() {
		t.exitErr = cmd.Wait()
		close(t.exited)
	}()
	if err := t.waitHealthy(ctx, listen); err != nil {
		return err
	}
	t.addr = listen
	if _, err := t.r.run(ctx, command{name: t.prog("vaultctl"), args: []string{"-data", t.StoreDir(), "company", "create", "bench"}, logTo: t.logFile()}); err != nil {
		return err
	}
	if err := t.enroll(ctx); err != nil {
		return err
	}
	if _, err := t.r.run(ctx, command{name: t.prog("vault-agent"), args: t.agent("config", "set", "corpus", "-path", t.corpus), logTo: t.logFile()}); err != nil {
		return err
	}
	t.hwmReset = resetPeakRSS(t.vaultd.Process.Pid) == nil
	return nil
}

// enroll creates a token and enrols the agent. A token
// the agent calls malformed is replaced by a fresh one a few times: token
// parsing once split base64url text on "_", which that alphabet contains.
func (t *vaultnode) enroll(ctx context.Context) error {
	return t.enrollAt(ctx, "bench", t.stateDir(), "")
}

// enrollAt enrols the agent whose state directory is state into company,
// under name ("" is the host name).
func (t *vaultnode) enrollAt(ctx context.Context, company, state, name string) error {
	var err error
	for range 8 {
		var u usage
		u, err = t.r.run(ctx, command{name: t.prog("vaultctl"), args: []string{"-data", t.StoreDir(), "token", "create", company}, logTo: t.logFile(), stdout: true})
		if err != nil {
			return err
		}
		token := lastLine(u.stdout)
		if token == "" {
			return errors.New("create token: vaultctl printed nothing; see " + t.logFile())
		}
		args := []string{"-state", state, "enroll", "-vault", t.addr, "-token", token}
		if name != "" {
			args = append(args, "-name", name)
		}
		_, err = t.r.run(ctx, command{name: t.prog("vault-agent"), args: args, logTo: t.logFile()})
		if err == nil || !strings.Contains(err.Error(), "malformed enrolment token") {
			return err
		}
		t.setupNotes = append(t.setupNotes, "vault-agent enroll called a fresh token malformed; retried with another token")
	}
	return err
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitHealthy polls GET /v1/health until it answers 200, vaultd exits, or a
// minute passes.
func (t *vaultnode) waitHealthy(ctx context.Context, addr string) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	defer client.CloseIdleConnections()
	deadline := t.clk.Now().Add(time.Minute)
	var last error
	for t.clk.Now().Before(deadline) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/v1/health", nil)
		if err != nil {
			return fmt.Errorf("probe vault health: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		select {
		case <-t.exited:
			return fmt.Errorf("start vaultd: it exited (%v)%s", t.exitErr, tail(filepath.Join(t.work, "vaultd.log")))
		case <-ctx.Done():
			return ctx.Err()
		case <-t.clk.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("start vaultd: no healthy answer from https://%s/v1/health within a minute (last: %v)%s", addr, last, tail(filepath.Join(t.work, "vaultd.log")))
}

// measureVault runs fn and adds the vault's CPU time and peak RSS during it,
// and the bytes that crossed the network (the vault's counts), to res.
func (t *vaultnode) measureVault(ctx context.Context, res *phaseResult, fn func() error) error {
	if t.vaultd == nil {
		return errors.New("vaultd is not running")
	}
	select {
	case <-t.exited:
		return fmt.Errorf("vaultd has exited (%v)%s", t.exitErr, tail(filepath.Join(t.work, "vaultd.log")))
	default:
	}
	pid := t.vaultd.Process.Pid
	res.Notes = append(res.Notes, t.setupNotes...)
	t.setupNotes = nil
	if t.hwmReset {
		_ = resetPeakRSS(pid)
	} else if !t.hwmWarned {
		res.Notes = append(res.Notes, "vault peak RSS is since its start: /proc/PID/clear_refs is not writable")
		t.hwmWarned = true
	}
	st0, err := procStat(pid)
	if err != nil {
		return err
	}
	w0, err := t.wireIdle(ctx)
	if err != nil {
		return err
	}
	stopAnon := make(chan struct{})
	anon := make(chan int64, 1)
	go func() { anon <- pollAnon(pid, stopAnon) }()
	runErr := fn()
	close(stopAnon)
	res.ServerPeakAnonBytes = <-anon
	w1, idleErr := t.wireIdle(ctx)
	res.BytesSent = w1.received - w0.received
	res.BytesReceived = w1.sent - w0.sent
	st1, err1 := procStat(pid)
	hwm, err2 := procPeakRSS(pid)
	if err := errors.Join(err1, err2); err != nil {
		return errors.Join(runErr, err)
	}
	res.ServerCPUSeconds = (st1.cpu - st0.cpu).Seconds()
	res.ServerMinorFaults = st1.minflt - st0.minflt
	res.ServerPeakRSSBytes = hwm
	return errors.Join(runErr, idleErr)
}

func (t *vaultnode) Backup(ctx context.Context, res *phaseResult) error {
	return t.measureVault(ctx, res, func() error {
		u, err := t.r.run(ctx, command{name: t.prog("vault-agent"), args: t.agent("backup", "-json", "corpus"), env: phaseProfiles(res.Phase), logTo: t.logFile(), stdout: true})
		res.addClient(u)
		if n, ok := findInt(u.stdout, "bytes_sent"); ok {
			res.ReportedBytesSent = &n
		}
		if f, ok := findFloat(u.stdout, "commit_seconds"); ok {
			res.CommitSeconds = f
		}
		return err
	})
}

func (t *vaultnode) Restore(ctx context.Context, dir string, over bool, res *phaseResult) (string, error) {
	args := []string{"restore", "corpus@latest", "-to", dir}
	if over {
		args = append(args, "-existing", "overwrite")
	}
	err := t.measureVault(ctx, res, func() error {
		u, err := t.r.run(ctx, command{name: t.prog("vault-agent"), args: t.agent(args...), env: phaseProfiles(res.Phase), logTo: t.logFile()})
		res.addClient(u)
		return err
	})
	// The contract does not say whether the configured path is recreated
	// under the target: look for the tree in the likely places.
	// The most specific place first: the mark is one entry's name.
	for _, root := range []string{filepath.Join(dir, t.corpus), filepath.Join(dir, filepath.Base(t.corpus)), dir} {
		if _, serr := os.Lstat(filepath.Join(root, t.marker)); serr == nil {
			return root, err
		}
	}
	return dir, err
}

// Close stops vaultd (SIGTERM, then SIGKILL after 30 s).
func (t *vaultnode) Close() error {
	var errs []error
	if t.vaultd != nil {
		_ = syscall.Kill(-t.vaultd.Process.Pid, syscall.SIGTERM)
		select {
		case <-t.exited:
		case <-t.clk.After(30 * time.Second):
			_ = syscall.Kill(-t.vaultd.Process.Pid, syscall.SIGKILL)
			<-t.exited
			errs = append(errs, errors.New("stop vaultd: it ignored SIGTERM for 30 s and was killed"))
		}
	}
	return errors.Join(errs...)
}

// phaseProfiles names the agent's profiles of one phase after it, so the
// next phase's agent (whose tag is the same) does not overwrite them:
// VAULTNODE_CPUPROFILE=P gives P.initial.agent, P.no-change.agent, ...
// beside vaultd's P.vaultd, which spans every phase.
func phaseProfiles(phase string) []string {
	var env []string
	for _, k := range []string{"VAULTNODE_CPUPROFILE", "VAULTNODE_HEAPPROFILE", "VAULTNODE_TRACE"} {
		if p := os.Getenv(k); p != "" {
			env = append(env, k+"="+p+"."+phase)
		}
	}
	return env
}

// findFloat is findInt for a number that may have a fraction.
func findFloat(out []byte, key string) (float64, bool) {
	var found float64
	ok := false
	walkJSON(out, func(k string, n json.Number) {
		if k == key {
			if f, err := n.Float64(); err == nil {
				found, ok = f, true
			}
		}
	})
	return found, ok
}

// findInt looks for a numeric field named key in any JSON object of out
// (one document, or one per line), at any depth; the last one wins.
func findInt(out []byte, key string) (int64, bool) {
	var found int64
	ok := false
	walkJSON(out, func(k string, n json.Number) {
		if k == key {
			if i, err := n.Int64(); err == nil {
				found, ok = i, true
			}
		}
	})
	return found, ok
}

// walkJSON calls fn with every numeric field of every JSON document in out.
func walkJSON(out []byte, fn func(key string, n json.Number)) {
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if n, isNum := x.(json.Number); isNum {
					fn(k, n)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	for {
		var v any
		if err := dec.Decode(&v); err != nil {
			break
		}
		walk(v)
	}
}
