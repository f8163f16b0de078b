package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"mime/quotedprintable"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestPasswordResetMail: real vaultd and SMTP server processes. A user
// asks for a reset link over HTTPS; the link arrives through the sink; the
// password is set through the link; the old password and the link no
// longer work, the new password does.
func TestPasswordResetMail(t *testing.T) {
	root := t.TempDir()
	portal := freeAddr(t)
	v := startVaultPortal(t, filepath.Join(root, "vault"), portal)
	sink := startSink(t, filepath.Join(v.dir, "tls"), "127.0.0.1:0")
	setMail(t, v, sink.addr)
	v.mustCtl("company", "create", "acme")
	add := exec.Command(filepath.Join(binDir, "vaultctl"), "-data", v.dir, "user", "add", "dora", "-company", "acme", "-caps", "view", "-password-stdin")
	add.Stdin = strings.NewReader("dora's old password\n")
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("vaultctl user add: %v\n%s", err, out)
	}
	v.mustCtl("user", "mail", "dora", "-email", "dora@acme.example")

	ca, err := os.ReadFile(filepath.Join(v.dir, "tls", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	t.Cleanup(c.CloseIdleConnections)
	base := "https://" + portal
	post := func(path, body string) (int, string) {
		t.Helper()
		res, err := c.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}

	st, known := post("/api/v1/password-reset", `{"user":"dora"}`)
	if st != 200 {
		t.Fatalf("ask for dora: %d %s", st, known)
	}
	if st, unknown := post("/api/v1/password-reset", `{"user":"nobody@acme.example"}`); st != 200 || unknown != known {
		t.Fatalf("ask for an unknown address: %d %s; for dora: %s", st, unknown, known)
	}
	raw := sink.await(func(m string) bool { return strings.Contains(m, "X-Sink-Rcpt-To: dora@acme.example") }, "reset mail to dora")
	msg, err := mail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("read the delivered message: %v\n%s", err, raw)
	}
	var body io.Reader = msg.Body
	if strings.EqualFold(msg.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
		body = quotedprintable.NewReader(msg.Body)
	}
	text, _ := io.ReadAll(body)
	link := regexp.MustCompile(`https://\S+/reset\?token=[A-Za-z0-9_-]+`).FindString(string(text))
	if !strings.HasPrefix(link, base+"/reset?token=") {
		t.Fatalf("the message has no link to the portal %s:\n%s", base, text)
	}
	u, _ := url.Parse(link)
	token := u.Query().Get("token")

	res, err := c.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(page), `name="new"`) {
		t.Fatalf("the link's page: %d %s", res.StatusCode, page)
	}
	// The page's form, as a browser posts it.
	res, err = c.PostForm(base+"/reset", url.Values{"token": {token}, "new": {"dora's new password"}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(page), "Password changed") {
		t.Fatalf("set the password through the link: %d %s", res.StatusCode, page)
	}
	if st, b := post("/api/v1/password-reset/confirm", `{"token":"`+token+`","new":"another password"}`); st != 404 {
		t.Fatalf("the link a second time: %d %s", st, b)
	}
	if st, b := post("/api/v1/login", `{"user":"dora","password":"dora's old password"}`); st != 401 {
		t.Fatalf("the old password: %d %s", st, b)
	}
	st, b := post("/api/v1/login", `{"user":"dora","password":"dora's new password"}`)
	var lr struct {
		User struct{ Name string } `json:"user"`
	}
	json.Unmarshal([]byte(b), &lr)
	if st != 200 || lr.User.Name != "dora" {
		t.Fatalf("the new password: %d %s", st, b)
	}
	if q := v.mustCtl("audit"); !strings.Contains(q, "reset by e-mail link") {
		t.Errorf("the audit log does not show the reset:\n%s", q)
	}
}
