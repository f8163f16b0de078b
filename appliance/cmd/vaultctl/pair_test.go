package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPairJoinAsksTheFirmware: vaultctl pair join checks the token and
// that the real vault (vaultd, standalone) holds nothing, then hands the
// join to the firmware's control socket and passes its answer or refusal
// on; a vault with a company is refused before the firmware is asked.
func TestPairJoinAsksTheFirmware(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "vaultd")
	if out, err := exec.Command("go", "build", "-o", bin, "vaultnode/appliance/cmd/vaultd").CombinedOutput(); err != nil {
		t.Fatalf("build vaultd: %v\n%s", err, out)
	}
	data := filepath.Join(dir, "vault")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vd := exec.CommandContext(ctx, bin, "-data", data, "-listen", "127.0.0.1:0", "-portal", "off")
	var log bytes.Buffer
	vd.Stdout, vd.Stderr = &log, &log
	if err := vd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vd.Process.Kill(); vd.Wait() })
	ctl := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := run(ctx, append([]string{"-data", data}, args...), &out, &errb)
		return out.String() + errb.String(), err
	}
	for {
		if _, err := ctl("company", "list"); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("vaultd never answered:\n%s", log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	old := fwSocket
	fwSocket = filepath.Join(dir, "control.sock")
	t.Cleanup(func() { fwSocket = old })
	token := "vnpair1." + strings.Repeat("A", 43) + "." + strings.Repeat("B", 43) + ".10.0.0.1:7443"

	if _, err := ctl("pair", "join", token); err == nil || !strings.Contains(err.Error(), "no appliance firmware answers") ||
		!strings.Contains(err.Error(), "-pair-join TOKEN") {
		t.Errorf("without a firmware: %v", err)
	}
	if _, err := ctl("pair", "join", "vnpair1.short"); err == nil || !strings.Contains(err.Error(), "not a pair join token") {
		t.Errorf("a bad token: %v", err)
	}
	cmds := fakeFirmware(t, fwSocket, "stopping the services\nvaultd joins the pair led by 10.0.0.1:7443 as member b\n")
	out, err := ctl("pair", "join", "-id", "b", "-address", "10.0.0.2", token)
	if err != nil || !strings.Contains(out, "vaultd joins the pair led by 10.0.0.1:7443") {
		t.Errorf("join: %v\n%s", err, out)
	}
	if got := <-cmds; got != "pair join "+token+" id=b address=10.0.0.2" {
		t.Errorf("the firmware was sent %q", got)
	}
	if _, err := ctl("company", "create", "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl("pair", "join", token); err == nil || !strings.Contains(err.Error(), "holds 1 companies (acme): a member joins empty") {
		t.Errorf("a vault with a company: %v", err)
	}
	select {
	case c := <-cmds:
		t.Errorf("the firmware was asked %q for a vault that holds a company", c)
	default:
	}
	if err := os.Remove(fwSocket); err != nil {
		t.Fatal(err)
	}
}
