package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// fakeFirmware serves the control socket at path: it answers each
// connection's command line with answer and records the commands.
func fakeFirmware(t *testing.T, path, answer string) <-chan string {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	cmds := make(chan string, 8)
	done := make(chan struct{})
	go func() { // owned by the test: ends when the listener closes
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			cmds <- strings.TrimSpace(line)
			io.WriteString(c, answer)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return cmds
}

// TestQoSFromTheFirmware: vaultctl qos asks the firmware's control socket
// for "qos json" and shows the classes with rates in Mbit/s and counters;
// a firmware error is passed on; without a firmware it says where to run it.
func TestQoSFromTheFirmware(t *testing.T) {
	dir := t.TempDir()
	fwSocket = filepath.Join(dir, "control.sock")
	t.Cleanup(func() { fwSocket = "/run/vaultnode/control.sock" })

	err := run(context.Background(), []string{"qos"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "support shell") || !strings.Contains(err.Error(), "developer machine") {
		t.Errorf("qos without a firmware: %v", err)
	}

	cmds := fakeFirmware(t, fwSocket, `{"classes":[`+
		`{"device":"eth0","direction":"egress","handle":"1:10","name":"management","rate_bits":7000000,"ceil_bits":100000000,"bytes":123456,"packets":789,"drops":2,"overlimits":5},`+
		`{"device":"ifb0","direction":"ingress","handle":"1:41","name":"uploads","rate_bits":60000000,"ceil_bits":100000000,"bytes":99,"packets":1,"drops":0,"overlimits":0}]}`+"\n")
	var out strings.Builder
	if err := run(context.Background(), []string{"qos"}, &out, io.Discard); err != nil {
		t.Fatalf("qos: %v", err)
	}
	if c := <-cmds; c != "qos json" {
		t.Errorf("sent %q, want qos json", c)
	}
	if !regexpLine(out.String(), "egress", "eth0", "1:10", "management", "7.00", "100.00", "123456", "789", "2", "5") ||
		!regexpLine(out.String(), "ingress", "ifb0", "1:41", "uploads", "60.00") {
		t.Errorf("qos output lacks the classes:\n%s", out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"qos", "-json"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), `"rate_bits": 7000000`) {
		t.Errorf("qos -json: %v\n%s", err, out.String())
	}
	if err := run(context.Background(), []string{"qos", "extra"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Errorf("qos extra: %v", err)
	}
}

// TestQoSFirmwareErrors: an error answer and a malformed or oversized
// answer are errors naming what went wrong, never a table.
func TestQoSFirmwareErrors(t *testing.T) {
	for _, tt := range []struct{ answer, want string }{
		{"error: qos: the uplink is not up yet\n", "the uplink is not up yet"},
		{"not json\n", "decode qos json"},
		{`{"classes":["` + strings.Repeat("x", 1<<20) + `"]}`, "exceeds"},
	} {
		fwSocket = filepath.Join(t.TempDir(), "control.sock")
		fakeFirmware(t, fwSocket, tt.answer)
		var out strings.Builder
		err := run(context.Background(), []string{"qos"}, &out, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) || out.Len() != 0 {
			t.Errorf("answer %.30q: %v, printed %q; want an error naming %q", tt.answer, err, out.String(), tt.want)
		}
	}
	fwSocket = "/run/vaultnode/control.sock"
}

func regexpLine(text string, words ...string) bool {
	for _, l := range strings.Split(text, "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(l, w)
		}
		if all {
			return true
		}
	}
	return false
}
