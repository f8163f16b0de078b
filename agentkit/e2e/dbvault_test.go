package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	dbBinOnce sync.Once
	dbBinDir  string
	dbBinErr  error
)

// dbBinaries builds vaultd, vaultctl and vault-agent once per test binary.
func dbBinaries(t *testing.T) string {
	t.Helper()
	dbBinOnce.Do(func() {
		dbBinDir, dbBinErr = os.MkdirTemp("", "vnbin")
		if dbBinErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", dbBinDir+"/", "vaultnode/appliance/cmd/vaultd", "vaultnode/appliance/cmd/vaultctl", "vaultnode/agentkit/cmd/vault-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			dbBinErr = fmt.Errorf("build binaries: %v\n%s", err, out)
		}
	})
	if dbBinErr != nil {
		t.Fatal(dbBinErr)
	}
	return dbBinDir
}

// dbVault is a vaultd process with one company.
type dbVault struct {
	bin, data, addr string
}

type dbAgent struct {
	bin, state string
}

func newDBVault(t *testing.T) *dbVault {
	t.Helper()
	bin := dbBinaries(t)
	v := &dbVault{bin: bin, data: t.TempDir(), addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	var log bytes.Buffer
	cmd := exec.Command(filepath.Join(bin, "vaultd"), "-data", v.data, "-listen", v.addr)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if t.Failed() {
			t.Logf("vaultd log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(v.data, "admin.sock")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vaultd did not start:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	v.ctl(t, "company", "create", "acme")
	return v
}

func (v *dbVault) ctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(v.bin, "vaultctl"), append([]string{"-data", v.data}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("vaultctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (v *dbVault) enroll(t *testing.T, name string) *dbAgent {
	t.Helper()
	a := &dbAgent{bin: v.bin, state: t.TempDir()}
	tok := strings.TrimSpace(v.ctl(t, "token", "create", "acme"))
	a.run(t, "enroll", "-vault", v.addr, "-token", tok, "-name", name)
	return a
}

func (a *dbAgent) run(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(a.bin, "vault-agent"), append([]string{"-state", a.state}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("vault-agent %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}
