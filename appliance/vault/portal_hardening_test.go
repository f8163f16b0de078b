package vault

import (
	"bytes"
	"crypto/tls"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/clock"
)

// TestPortalFormBound: a signed-in form post without the CSRF header is
// read only when URL-encoded and at most maxFormBody: a multipart body, or
// a token past the bound, is refused as lacking the token (and the vault
// never parses a large multipart body into memory).
func TestPortalFormBound(t *testing.T) {
	pv := servePortal(t)
	pv.addUser(t, UserRequest{Name: "ann", Kind: catalog.UserCompany, Company: "acme"})
	b := pv.browser(t)
	if st, code := b.login("ann", "password-of-ann"); st != 200 {
		t.Fatalf("sign in: %d %s", st, code)
	}
	post := func(ct string, body io.Reader) int {
		t.Helper()
		req, _ := http.NewRequest("POST", pv.base+"/logout", body)
		req.Header.Set("Content-Type", ct)
		res, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	var mp bytes.Buffer
	w := multipart.NewWriter(&mp)
	w.WriteField("csrf_token", b.csrf)
	w.WriteField("filler", strings.Repeat("x", 1<<20))
	w.Close()
	if st := post(w.FormDataContentType(), &mp); st != 403 {
		t.Errorf("multipart sign-out form with the token: %d, want 403 (multipart is never parsed)", st)
	}
	long := "filler=" + strings.Repeat("x", maxFormBody) + "&csrf_token=" + url.QueryEscape(b.csrf)
	if st := post("application/x-www-form-urlencoded", strings.NewReader(long)); st != 403 {
		t.Errorf("form with the token past %d bytes: %d, want 403", maxFormBody, st)
	}
	if st, _, _ := b.do("GET", PortalAPI+"me", nil); st != 200 {
		t.Fatalf("the session ended on a refused sign-out: %d", st)
	}
	if st := post("application/x-www-form-urlencoded", strings.NewReader("csrf_token="+url.QueryEscape(b.csrf))); st != 303 {
		t.Errorf("a small form with the token: %d, want 303", st)
	}
}

// TestPortalConnCaps: the portal's listener refuses connections past
// PortalPerAddr from one address, and admits again once one closes.
func TestPortalConnCaps(t *testing.T) {
	clk := clock.NewFake(time.Now())
	sv := serveTestVaultWith(t, Options{Clock: clk, Portal: "127.0.0.1:0", Limits: Limits{PortalPerAddr: 3}}, "acme")
	addr := sv.PortalAddr()
	var held []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		defer c.Close()
	}
	// The fourth is closed as it is accepted: its read ends at once.
	c4, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c4.Close()
	if n, err := c4.Read(make([]byte, 1)); err == nil {
		t.Fatalf("fourth connection from one address read %d bytes: want it closed", n)
	}
	// Another address is not counted with the first.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	get := func(dial func(network, addr string) (net.Conn, error)) error {
		tr := &http.Transport{Dial: dial, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
		defer tr.CloseIdleConnections()
		res, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/login")
		if err == nil {
			res.Body.Close()
		}
		return err
	}
	if err := get(d.Dial); err != nil {
		t.Fatalf("a request from another address: %v", err)
	}
	held[0].Close()
	// Once one closes, its address is admitted again.
	for i := 0; ; i++ {
		err := get(net.Dial)
		if err == nil {
			break
		}
		if i > 1000 {
			t.Fatalf("no request admitted after a connection closed: %v", err)
		}
		time.Sleep(time.Millisecond) // the server notices the close asynchronously
	}
}
