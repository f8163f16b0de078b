package vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// TestEveryRouteIsInTheAuthorizationTable walks every route the agent API
// and the admin socket register: each must have its capability in
// routeCaps, and every entry of routeCaps must be a registered route.
func TestEveryRouteIsInTheAuthorizationTable(t *testing.T) {
	v := openTestVault(t)
	registered := map[string]bool{}
	for _, rt := range []*router{v.agentRoutes(v.authenticateAgent), v.adminRoutes(authenticateAdmin), v.portalRoutes(v.authenticatePortal)} {
		for _, p := range rt.patterns {
			if _, ok := routeCaps[p]; !ok {
				t.Errorf("route %q is not in the authorization table (routeCaps)", p)
			}
			registered[p] = true
		}
	}
	for p := range routeCaps {
		if !registered[p] {
			t.Errorf("routeCaps lists %q, which no listener registers", p)
		}
	}
}

// servedVault is a vault serving on loopback, as vaultd does.
type servedVault struct {
	*Vault
	dir, addr string
}

func serveTestVault(t *testing.T, companies ...string) *servedVault {
	t.Helper()
	return serveTestVaultWith(t, Options{}, companies...)
}

// serveTestVaultWith is serveTestVault with options (Dir and Listen are
// set here).
func serveTestVaultWith(t *testing.T, opts Options, companies ...string) *servedVault {
	t.Helper()
	dir := t.TempDir()
	opts.Dir, opts.Listen = dir, "127.0.0.1:0"
	v, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range companies {
		if err := v.NewCompany(c); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- v.Serve(ctx, func(a string) { ready <- a }) }() // owner: this test's cleanup
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		<-done
		v.Close()
	})
	return &servedVault{Vault: v, dir: dir, addr: addr}
}

// agentClient enrols a computer of company through POST /v1/enroll and
// returns an HTTPS client holding its certificate, and its id.
func (sv *servedVault) agentClient(t *testing.T, company, hostname string) (*http.Client, string) {
	t.Helper()
	var tok wire.Token
	rand.Read(tok.Secret[:])
	tok.CAPin = wire.Pin(sv.CA.CA)
	if err := sv.Catalog.AddToken(tok.Secret[:], catalog.Token{Company: company, Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := json.Marshal(wire.EnrollRequest{Token: tok.String(), Hostname: hostname,
		CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})})
	resp, err := sv.tlsClient(nil).Post("https://"+sv.addr+wire.PathEnroll, "application/json", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var er wire.EnrollResponse
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&er) != nil {
		t.Fatalf("enrol %s: status %d", hostname, resp.StatusCode)
	}
	blk, _ := pem.Decode(er.Certificate)
	return sv.tlsClient(&tls.Certificate{Certificate: [][]byte{blk.Bytes}, PrivateKey: key}), er.ComputerID
}

func (sv *servedVault) tlsClient(cert *tls.Certificate) *http.Client {
	conf := &tls.Config{RootCAs: sv.CA.Pool(), ServerName: "vaultd.vaultnode", MinVersion: tls.VersionTLS13}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: time.Minute}
}

func (sv *servedVault) adminClient() *http.Client {
	sock := filepath.Join(sv.dir, "admin.sock")
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

type answer struct {
	status int
	code   string
	msg    string
}

func call(t *testing.T, c *http.Client, base, pattern, session string) answer {
	t.Helper()
	method, path, ok := strings.Cut(pattern, " ")
	if !ok { // the catch-all
		method, path = "GET", "/v1/no-such-route"
	}
	path = strings.NewReplacer("{name}", "home", "{config}", "home", "{id}", session).Replace(path)
	var body io.Reader
	if method == "POST" || method == "PUT" {
		body = strings.NewReader("{}")
	}
	req, _ := http.NewRequest(method, base+path, body)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", pattern, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode}
	if resp.StatusCode >= 300 {
		var we wire.Error
		json.Unmarshal(b, &we)
		a.code, a.msg = we.Code, we.Message
	}
	return a
}

func denied(a answer) bool { return a.status == 401 || a.status == 403 }

// TestAuthorizationMatrix sends every route, from each kind of principal,
// to a vault serving on loopback, and checks the answer docs/protocol.md
// documents: public routes answer anyone; every other agent route needs a
// client certificate (401 without, 403 revoked when revoked) and acts only
// on the computer of that certificate (another computer's session is
// unknown to it, even within the company); the admin socket is the
// operator, who holds every capability but backup.
func TestAuthorizationMatrix(t *testing.T) {
	sv := serveTestVault(t, "acme", "globex")
	base := "https://" + sv.addr
	agentA, _ := sv.agentClient(t, "acme", "a")
	agentA2, _ := sv.agentClient(t, "acme", "a2")
	agentB, _ := sv.agentClient(t, "globex", "b")
	revoked, revokedID := sv.agentClient(t, "acme", "gone")
	if err := sv.Catalog.Revoke(revokedID, time.Now()); err != nil {
		t.Fatal(err)
	}
	anon := sv.tlsClient(nil)

	// Agent A's open session, which no one else may use.
	req, _ := http.NewRequest("PUT", base+wire.PathConfigs+"home", strings.NewReader(`{"kind":"files","paths":["/home"]}`))
	if resp, err := agentA.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("put config: %v %v", resp, err)
	}
	resp, err := agentA.Post(base+wire.PathSessions, "application/json", strings.NewReader(`{"config":"home"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("open session: %v %v", resp, err)
	}
	var sess wire.Session
	json.NewDecoder(resp.Body).Decode(&sess)
	resp.Body.Close()

	agentRoutes := sv.agentRoutes(sv.authenticateAgent).patterns
	// Abort ends the session: send it last.
	slices.SortStableFunc(agentRoutes, func(a, b string) int {
		return boolCmp(strings.HasSuffix(a, "/abort"), strings.HasSuffix(b, "/abort"))
	})
	for _, p := range agentRoutes {
		need := routeCaps[p]
		onSession := strings.Contains(p, "{id}") && !strings.Contains(p, wire.PathCommand) // commands: TestCommandScope
		for _, c := range []struct {
			who    string
			client *http.Client
			check  func(answer) bool
			want   string
		}{
			{"anonymous", anon, func(a answer) bool {
				if need == CapPublic {
					return !denied(a)
				}
				return a.status == 401 && a.code == wire.CodeUnauthorized
			}, "public: not 401/403; else 401 unauthorized"},
			{"revoked agent", revoked, func(a answer) bool {
				if need == CapPublic {
					return !denied(a)
				}
				return a.status == 403 && a.code == wire.CodeRevoked
			}, "public: not 401/403; else 403 revoked"},
			{"agent of another company", agentB, func(a answer) bool {
				if onSession {
					return a.status == 404 && a.code == wire.CodeUnknownSession
				}
				return !denied(a)
			}, "another computer's session: 404 unknown_session; else not 401/403"},
			{"another agent of the same company", agentA2, func(a answer) bool {
				if onSession {
					return a.status == 404 && a.code == wire.CodeUnknownSession
				}
				return !denied(a)
			}, "another computer's session: 404 unknown_session; else not 401/403"},
			{"the session's agent", agentA, func(a answer) bool { return !denied(a) && a.code != wire.CodeUnknownSession },
				"not 401/403, session known"},
		} {
			if a := call(t, c.client, base, p, sess.ID); !c.check(a) {
				t.Errorf("%s, %s: got %d %s %q; want %s", p, c.who, a.status, a.code, a.msg, c.want)
			}
		}
	}

	admin := sv.adminClient()
	for _, p := range sv.adminRoutes(authenticateAdmin).patterns {
		if a := call(t, admin, "http://vault", p, ""); denied(a) {
			t.Errorf("%s, operator: got %d %s %q; want not 401/403", p, a.status, a.code, a.msg)
		}
	}
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// TestMiddlewareRefusesWithoutTheCapability: a principal holding no
// capability (a portal user before any is granted) is refused on every
// route of both listeners that needs one, with 403 forbidden naming it.
func TestMiddlewareRefusesWithoutTheCapability(t *testing.T) {
	v := openTestVault(t)
	nobody := &Principal{Kind: User, Name: "user nobody of acme", Company: "acme"}
	authn := func(*http.Request) (*Principal, error) { return nobody, nil }
	for _, rt := range []*router{v.agentRoutes(authn), v.adminRoutes(authn), v.portalRoutes(authn)} {
		h := rt.handler()
		for _, p := range rt.patterns {
			method, path, ok := strings.Cut(p, " ")
			if !ok {
				method, path = "GET", "/v1/no-such-route"
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(method, strings.NewReplacer("{$}", "", "{", "", "}", "").Replace(path), strings.NewReader("{}")))
			var we wire.Error
			json.Unmarshal(rec.Body.Bytes(), &we)
			if need := routeCaps[p]; need == CapPublic {
				if rec.Code == 403 {
					t.Errorf("%s is public but refused %s: %s", p, nobody, rec.Body)
				}
			} else if html := strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html"); html && (rec.Code != 403 || !strings.Contains(rec.Body.String(), string(need))) {
				t.Errorf("%s (a portal page), %s: got %d %s; want a 403 page naming %q", p, nobody, rec.Code, rec.Body, need)
			} else if !html && (rec.Code != 403 || we.Code != wire.CodeForbidden || !strings.Contains(we.Message, string(need))) {
				t.Errorf("%s, %s: got %d %s; want 403 forbidden naming %q", p, nobody, rec.Code, rec.Body, need)
			}
		}
	}
}

// TestRoutesAreDocumented: docs/protocol.md names every route the vault
// serves, agent API and admin socket, so docs and code cannot drift apart.
func TestRoutesAreDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Join(strings.Fields(string(b)), " ")
	v := openTestVault(t)
	names := strings.NewReplacer("{name}", "NAME", "{config}", "CONFIG", "{id}", "ID")
	for _, p := range v.agentRoutes(v.authenticateAgent).patterns {
		if p == "/" {
			continue
		}
		if want := names.Replace(p); !strings.Contains(doc, want) {
			t.Errorf("docs/protocol.md does not name the agent route %q (as %q)", p, want)
		}
	}
	for _, p := range v.adminRoutes(authenticateAdmin).patterns {
		_, path, _ := strings.Cut(p, " ")
		if !strings.Contains(doc, path) {
			t.Errorf("docs/protocol.md does not name the admin route %q", p)
		}
	}
}

// TestPortalRoutesAreDocumented: docs/api.md names every portal route.
func TestPortalRoutesAreDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	v := openTestVault(t)
	for _, p := range v.portalRoutes(v.authenticatePortal).patterns {
		want := strings.Replace(p, "{$}", "", 1)
		if !strings.Contains(doc, want) {
			t.Errorf("docs/api.md does not name the portal route %q (as %q)", p, want)
		}
	}
}
