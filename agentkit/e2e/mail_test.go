package e2e

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// smtpSink is scripts/smtpsink in its own process: STARTTLS with the
// vault's own server certificate (it names 127.0.0.1), AUTH PLAIN as
// vault / "sink password", every accepted message a file in inbox.
type smtpSink struct {
	t     *testing.T
	addr  string
	inbox string
	hold  string // while this file exists, the sink keeps a message and holds its answer
	cmd   *exec.Cmd
}

func startSink(t *testing.T, tlsDir, addr string) *smtpSink {
	t.Helper()
	root := t.TempDir()
	s := &smtpSink{t: t, inbox: filepath.Join(root, "inbox"), hold: filepath.Join(root, "hold")}
	os.Mkdir(s.inbox, 0o755)
	s.cmd = exec.Command(filepath.Join(binDir, "smtpsink"), "-listen", addr, "-cert", filepath.Join(tlsDir, "server.pem"),
		"-key", filepath.Join(tlsDir, "server.key"), "-user", "vault", "-password", "sink password", "-dir", s.inbox, "-hold-while", s.hold)
	out, _ := s.cmd.StdoutPipe()
	s.cmd.Stderr = os.Stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("smtpsink did not start: %v", err)
	}
	s.addr = strings.TrimSpace(strings.TrimPrefix(line, "listening "))
	return s
}

// messages reads what arrived, oldest first.
func (s *smtpSink) messages() []string {
	ents, _ := os.ReadDir(s.inbox)
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".eml") {
			b, _ := os.ReadFile(filepath.Join(s.inbox, e.Name()))
			out = append(out, string(b))
		}
	}
	return out
}

// await waits (60 s at most) until a message matching want has arrived.
func (s *smtpSink) await(want func(string) bool, what string) string {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		for _, m := range s.messages() {
			if want(m) {
				return m
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %s arrived within 60 s; the inbox holds %d message(s)", what, len(s.messages()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var messageID = regexp.MustCompile(`(?m)^Message-ID: <([^>]+)>`)

// ids counts the messages that arrived per Message-ID.
func (s *smtpSink) ids() map[string]int {
	out := map[string]int{}
	for _, m := range s.messages() {
		if id := messageID.FindStringSubmatch(m); id != nil {
			out[id[1]]++
		}
	}
	return out
}

// setMail points the vault at the sink.
func setMail(t *testing.T, v *vaultProc, addr string) {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command(filepath.Join(binDir, "vaultctl"), "-data", v.dir, "mail", "set", "-host", host, "-port", port,
		"-from", "vault@provider.example", "-user", "vault", "-password-stdin", "-ca", filepath.Join(v.dir, "tls", "ca.pem"))
	cmd.Stdin = strings.NewReader("sink password\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vaultctl mail set: %v\n%s", err, out)
	}
}

// TestMailProtected: real vaultd, vault-agent and SMTP server processes.
// vaultctl mail test goes through STARTTLS and AUTH; the computer's first
// complete version sends "now protected" (with what it covers) to its
// technical contact; and LAST SEEN is right after a one-shot backup.
func TestMailProtected(t *testing.T) {
	e := newEnv(t)
	sink := startSink(t, filepath.Join(e.v.dir, "tls"), "127.0.0.1:0")
	setMail(t, e.v, sink.addr)
	out := e.v.mustCtl("mail", "test", "admin@provider.example")
	if !strings.Contains(out, "sent to admin@provider.example") {
		t.Fatalf("vaultctl mail test: %s", out)
	}
	sink.await(func(m string) bool {
		return strings.Contains(m, "X-Sink-Rcpt-To: admin@provider.example") && strings.Contains(m, "Subject: vaultnode test message")
	}, "test message")

	e.v.mustCtl("contact", e.comp, "it@acme.example")
	for i := 0; i < 5; i++ {
		os.WriteFile(filepath.Join(e.src, "file"+string(rune('a'+i))), bytes.Repeat([]byte{byte(i)}, 10000), 0o644)
	}
	before := time.Now()
	e.a.backup("home")

	// Every request the agent made counted as contact: LAST SEEN is the
	// backup's, at once (not "never", not the enrolment's).
	st := e.v.mustCtl("status")
	var line string
	for _, l := range strings.Split(st, "\n") {
		if strings.Contains(l, e.comp) {
			line = l
		}
	}
	if line == "" || strings.Contains(line, "never") {
		t.Fatalf("vaultctl status right after a one-shot backup:\n%s", st)
	}
	seen := regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d`).FindAllString(line, -1)
	if len(seen) < 2 {
		t.Fatalf("status line %q lacks COVERS and LAST SEEN times", line)
	}
	if at, err := time.ParseInLocation(time.DateTime, seen[1], time.Local); err != nil || at.Before(before.Truncate(time.Second)) {
		t.Fatalf("LAST SEEN %s is before the backup started (%s): %v", seen[1], before.Format(time.DateTime), err)
	}

	m := sink.await(func(m string) bool { return strings.Contains(m, "X-Sink-Rcpt-To: it@acme.example") }, "mail to the technical contact")
	for _, want := range []string{"Subject: pc1 is now protected (home)", e.src, "From: <vault@provider.example>"} {
		if !strings.Contains(strings.ReplaceAll(m, "=\r\n", ""), want) {
			t.Errorf("the protected mail lacks %q:\n%s", want, m)
		}
	}
	// One message per change: another backup tells nothing new.
	e.a.backup("home")
	e.v.mustCtl("mail", "test", "admin@provider.example") // after the notifier's pass for that commit
	n := 0
	for _, m := range sink.messages() {
		if strings.Contains(m, "X-Sink-Rcpt-To: it@acme.example") && strings.Contains(m, "is now protected") {
			n++
		}
		// The configuration's root lies under /tmp: that is the operator's
		// choice, not a temporary directory backed up by mistake.
		if strings.Contains(m, "temporary or cache directories") {
			t.Errorf("a root under the temporary directory was taken for a mistake:\n%s", m)
		}
	}
	if n != 1 {
		t.Errorf("the technical contact got %d \"now protected\" messages, want 1", n)
	}
}

// TestMailKill: SIGKILL vaultd with mail queued (the server down): after
// the restart each message arrives exactly once. Then SIGKILL vaultd in
// the one window (the server has the message and holds its answer): the
// message is uncertain after the restart and never sent again.
func TestMailKill(t *testing.T) {
	e := newEnv(t)
	addr := freeAddr(t) // nobody listens yet
	setMail(t, e.v, addr)
	for _, to := range []string{"a@example.com", "b@example.com", "c@example.com"} {
		if r := e.v.ctl("mail", "test", to); r.code == 0 || !strings.Contains(r.stderr, "stays queued") {
			t.Fatalf("vaultctl mail test with the server down: %s", r)
		}
	}
	if q := e.v.mustCtl("mail"); strings.Count(q, " queued ") != 3 {
		t.Fatalf("the queue before the kill:\n%s", q)
	}
	e.v.kill()
	sink := startSink(t, filepath.Join(e.v.dir, "tls"), addr)
	e.v.start()
	for _, to := range []string{"a@example.com", "b@example.com", "c@example.com"} {
		sink.await(func(m string) bool { return strings.Contains(m, "X-Sink-Rcpt-To: "+to) }, "queued mail to "+to)
	}
	awaitQueue(t, e.v, func(q string) bool { return strings.Count(q, " sent ") == 3 })

	// The window: the sink keeps the next message and holds its answer.
	os.WriteFile(sink.hold, nil, 0o644)
	held := exec.Command(filepath.Join(binDir, "vaultctl"), "-data", e.v.dir, "mail", "test", "held@example.com")
	if err := held.Start(); err != nil {
		t.Fatal(err)
	}
	sink.await(func(m string) bool { return strings.Contains(m, "X-Sink-Rcpt-To: held@example.com") }, "the held message")
	e.v.kill()
	held.Wait()
	os.Remove(sink.hold)
	e.v.start()
	q := e.v.mustCtl("mail")
	if !regexp.MustCompile(`held@example.com\s+uncertain`).MatchString(q) {
		t.Fatalf("the message killed in its window is not uncertain:\n%s", q)
	}
	e.v.mustCtl("mail", "test", "after@example.com")
	for id, n := range sink.ids() {
		if n != 1 {
			t.Errorf("message %s arrived %d times", id, n)
		}
	}
	if n := len(sink.ids()); n != 5 {
		t.Errorf("%d distinct messages arrived, want 5 (three queued, the held one, one after)", n)
	}
}

// awaitQueue waits (60 s at most) until `vaultctl mail` satisfies ok.
func awaitQueue(t *testing.T, v *vaultProc, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		q := v.mustCtl("mail")
		if ok(q) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queue did not settle within 60 s:\n%s", q)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
