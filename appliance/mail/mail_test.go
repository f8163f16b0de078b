package mail

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/pki"
	"vaultnode/internal/clock"
)

// sinkBin is scripts/smtpsink, built once: the tests talk to a real SMTP
// server in its own process.
var sinkBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vaultnode-smtpsink-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sinkBin = filepath.Join(dir, "smtpsink")
	cmd := exec.Command("go", "build", "-o", sinkBin, "vaultnode/scripts/smtpsink")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build smtpsink:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// sink is a running smtpsink with its certificate's CA.
type sink struct {
	dir, addr, ca string
	refuse        string // while this file exists, RCPT gets 451
}

func startSink(t *testing.T) *sink {
	t.Helper()
	root := t.TempDir()
	if _, err := pki.LoadOrCreate(filepath.Join(root, "tls"), time.Now()); err != nil {
		t.Fatal(err)
	}
	s := &sink{dir: filepath.Join(root, "inbox"), refuse: filepath.Join(root, "refuse")}
	os.Mkdir(s.dir, 0o755)
	ca, _ := os.ReadFile(filepath.Join(root, "tls", "ca.pem"))
	s.ca = string(ca)
	cmd := exec.Command(sinkBin, "-listen", "127.0.0.1:0", "-cert", filepath.Join(root, "tls", "server.pem"),
		"-key", filepath.Join(root, "tls", "server.key"), "-user", "vault", "-password", "sink password",
		"-dir", s.dir, "-refuse-while", s.refuse)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("smtpsink did not start: %v", err)
	}
	s.addr = strings.TrimSpace(strings.TrimPrefix(line, "listening "))
	return s
}

func (s *sink) settings(t *testing.T) Settings {
	port := 0
	fmt.Sscanf(s.addr[strings.LastIndex(s.addr, ":")+1:], "%d", &port)
	return Settings{Host: "127.0.0.1", Port: port, Username: "vault", Password: "sink password", From: "vault@example.com", CA: s.ca}
}

// inbox reads what arrived: file contents, oldest first.
func (s *sink) inbox(t *testing.T) []string {
	t.Helper()
	ents, _ := os.ReadDir(s.dir)
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".eml") {
			b, _ := os.ReadFile(filepath.Join(s.dir, e.Name()))
			out = append(out, string(b))
		}
	}
	return out
}

func openQueue(t *testing.T, dir string, clk clock.Clock) *Queue {
	t.Helper()
	q, err := Open(dir, clk, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func msg(id, to string) Message {
	return Message{ID: id, Kind: "test", To: to, Subject: "subject of " + id, Body: "body of " + id + "\n"}
}

// TestSendThroughSink: queued messages go through STARTTLS and AUTH to a
// real SMTP server, once each, and end "sent"; queuing an id again sends
// nothing more.
func TestSendThroughSink(t *testing.T) {
	s := startSink(t)
	dir := t.TempDir()
	if _, err := SaveSettings(dir, s.settings(t)); err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
	q := openQueue(t, dir, clk)
	for _, id := range []string{"m1", "m2", "m3"} {
		if added, err := q.Add(msg(id, "ann@example.com")); err != nil || !added {
			t.Fatalf("add %s: %v %v", id, added, err)
		}
	}
	if added, _ := q.Add(msg("m1", "ann@example.com")); added {
		t.Fatal("an id already queued was queued again")
	}
	q.SendDue(t.Context())
	got := s.inbox(t)
	if len(got) != 3 {
		t.Fatalf("%d messages arrived, want 3", len(got))
	}
	for i, id := range []string{"m1", "m2", "m3"} {
		for _, want := range []string{"X-Sink-Rcpt-To: ann@example.com", "Subject: subject of " + id, "Message-ID: <" + id + "@vaultnode>", "body of " + id} {
			if !strings.Contains(got[i], want) {
				t.Errorf("message %d lacks %q:\n%s", i, want, got[i])
			}
		}
		m, err := q.Get(id)
		if err != nil || m.State != StateSent {
			t.Errorf("%s: %s %v, want sent", id, m.State, err)
		}
	}
	if added, _ := q.Add(msg("m2", "ann@example.com")); added {
		t.Fatal("an id already sent was queued again")
	}
	q.SendDue(t.Context())
	if n := len(s.inbox(t)); n != 3 {
		t.Fatalf("%d messages after queuing a sent id again, want 3", n)
	}
	// Done messages are kept KeepDone, then forgotten.
	clk.Advance(KeepDone + 2*time.Hour)
	q.SendDue(t.Context())
	if ms, _ := q.List(); len(ms) != 0 {
		t.Fatalf("%d messages listed %s after they were sent, want none", len(ms), KeepDone+2*time.Hour)
	}
}

// TestRetryBackoff: a temporary refusal (451) keeps the message queued with
// a growing wait; once the server takes it, it arrives once. A wrong
// password fails the connection and retries too; a message older than
// MaxAge fails for good.
func TestRetryBackoff(t *testing.T) {
	s := startSink(t)
	dir := t.TempDir()
	SaveSettings(dir, s.settings(t))
	clk := clock.NewFake(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
	q := openQueue(t, dir, clk)
	os.WriteFile(s.refuse, nil, 0o644)
	q.Add(msg("r1", "bob@example.com"))
	var waits []time.Duration
	for i := 0; i < 3; i++ {
		next := q.SendDue(t.Context())
		m, _ := q.Get("r1")
		if m.State != StateQueued || !strings.Contains(m.LastError, "451") {
			t.Fatalf("attempt %d: %s %q, want queued after 451", i+1, m.State, m.LastError)
		}
		waits = append(waits, next.Sub(clk.Now()))
		clk.Set(next)
	}
	if waits[0] != RetryBase || waits[1] != 2*RetryBase || waits[2] != 4*RetryBase {
		t.Errorf("waits %v, want %v, %v, %v", waits, RetryBase, 2*RetryBase, 4*RetryBase)
	}
	if n := len(s.inbox(t)); n != 0 {
		t.Fatalf("%d messages arrived while refused", n)
	}
	os.Remove(s.refuse)
	q.SendDue(t.Context())
	if m, _ := q.Get("r1"); m.State != StateSent || len(s.inbox(t)) != 1 {
		t.Fatalf("after the refusal ended: %s, %d arrived; want sent, 1", m.State, len(s.inbox(t)))
	}

	bad := s.settings(t)
	bad.Password = "wrong password"
	SaveSettings(dir, bad)
	q.Add(msg("r2", "bob@example.com"))
	q.SendDue(t.Context())
	if m, _ := q.Get("r2"); m.State != StateQueued || !strings.Contains(m.LastError, "535") {
		t.Fatalf("wrong SMTP password: %s %q, want queued with the server's 535", m.State, m.LastError)
	}
	clk.Advance(MaxAge)
	q.SendDue(t.Context())
	if m, _ := q.Get("r2"); m.State != StateFailed {
		t.Fatalf("after %s: %s, want failed", MaxAge, m.State)
	}
}

// TestCrashWindow: vaultd stopping between marking a message "sending"
// and the server's answer leaves it uncertain, and it is never sent again;
// stopping before the mark (a message merely queued) sends it once after
// the restart.
func TestCrashWindow(t *testing.T) {
	s := startSink(t)
	dir := t.TempDir()
	SaveSettings(dir, s.settings(t))
	clk := clock.NewFake(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
	q := openQueue(t, dir, clk)
	q.Add(msg("c1", "cy@example.com"))
	q.Add(msg("c2", "cy@example.com"))
	// The sender "dies" right after marking c1: its goroutine ends there,
	// the connection closes without the end of the data.
	q.marked = func(m Message) { runtime.Goexit() }
	done := make(chan struct{})
	go func() { defer close(done); q.SendDue(context.Background()) }()
	<-done
	// The restart.
	q2 := openQueue(t, dir, clk)
	m, _ := q2.Get("c1")
	if m.State != StateUncertain {
		t.Fatalf("c1 after a crash in its window: %s, want uncertain", m.State)
	}
	q2.SendDue(t.Context())
	q2.SendDue(t.Context())
	got := s.inbox(t)
	if len(got) != 1 || !strings.Contains(got[0], "subject of c2") {
		t.Fatalf("arrived after the restart: %d messages, want c2 alone", len(got))
	}
	if m, _ := q2.Get("c1"); m.State != StateUncertain {
		t.Fatalf("c1 was sent again: %s", m.State)
	}
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct {
		s   Settings
		bad string
	}{
		{Settings{Host: "smtp.example.com", From: "v@example.com"}, ""},
		{Settings{Host: "", From: "v@example.com"}, "host"},
		{Settings{Host: "h", From: "Vault <v@example.com>"}, "address"},
		{Settings{Host: "h", From: "v@example.com", Security: "none", Username: "u", Password: "p"}, "without TLS"},
		{Settings{Host: "h", From: "v@example.com", Username: "u"}, "both"},
		{Settings{Host: "h", From: "v@example.com", Security: "ssl"}, "security"},
		{Settings{Host: "h", From: "v@example.com", CA: "not pem"}, "PEM"},
	} {
		n, err := tc.s.Normalize()
		if tc.bad == "" {
			if err != nil || n.Port != 587 || n.Security != SecuritySTARTTLS {
				t.Errorf("%+v: %+v %v, want port 587 starttls", tc.s, n, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.bad) {
			t.Errorf("%+v: %v, want an error about %q", tc.s, err, tc.bad)
		}
	}
	if _, err := LoadSettings(t.TempDir()); err != ErrNotConfigured {
		t.Errorf("no settings: %v, want ErrNotConfigured", err)
	}
}
