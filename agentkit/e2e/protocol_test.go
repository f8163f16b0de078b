package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vaultnode/agentkit/client"
	"vaultnode/agentkit/state"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// TestEnrolment: a token works once; a revoked computer is refused with a
// message that says so.
func TestEnrolment(t *testing.T) {
	e := newEnv(t)
	tok := e.v.token("acme")
	a2 := &agent{t: t, state: filepath.Join(e.root, "agent2")}
	out := a2.must("enroll", "-vault", e.v.addr, "-token", tok, "-name", "pc2")
	comp2 := strings.Fields(out)[2]

	a3 := &agent{t: t, state: filepath.Join(e.root, "agent3")}
	r := a3.run("enroll", "-vault", e.v.addr, "-token", tok, "-name", "pc3")
	if r.code == 0 || !strings.Contains(r.stderr, "already used") || !strings.Contains(r.stderr, "vaultctl token create") {
		t.Errorf("second enrolment with one token: want a refusal saying the token was used and how to get another; got %s", r)
	}
	if r := a3.run("config", "list"); r.code == 0 || !strings.Contains(r.stderr, "not enrolled") {
		t.Errorf("an agent whose enrolment failed: want 'not enrolled'; got %s", r)
	}
	r = a3.run("enroll", "-vault", e.v.addr, "-token", "vn1_garbage", "-name", "pc3")
	if r.code == 0 || !strings.Contains(r.stderr, "token") {
		t.Errorf("malformed token: %s", r)
	}
	// An expired token (1 ms lives shorter than starting the agent).
	expired := strings.TrimSpace(e.v.mustCtl("token", "create", "acme", "-ttl", "1ms"))
	time.Sleep(5 * time.Millisecond)
	r = a3.run("enroll", "-vault", e.v.addr, "-token", expired, "-name", "pc3")
	if r.code == 0 || !strings.Contains(r.stderr, "expired") {
		t.Errorf("expired token: want a refusal that mentions expiry; got %s", r)
	}
	if r := e.v.ctl("token", "create", "nosuchcompany"); r.code == 0 {
		t.Errorf("token for an unknown company: %s", r)
	}

	// pc2 works, then is revoked.
	a2.must("config", "set", "etc", "-path", e.src)
	if out := e.v.mustCtl("computers"); !strings.Contains(out, comp2) || !strings.Contains(out, "etc") {
		t.Errorf("vaultctl computers does not show pc2 and its configuration:\n%s", out)
	}
	e.v.mustCtl("revoke", comp2)
	for _, args := range [][]string{{"config", "list"}, {"backup", "etc"}, {"versions"}} {
		r := a2.run(args...)
		if r.code == 0 || !strings.Contains(r.stderr, "revoked") {
			t.Errorf("revoked computer, vault-agent %v: want a refusal saying it was revoked; got %s", args, r)
		}
	}
	if out := e.v.mustCtl("computers"); !strings.Contains(out, "revoked") {
		t.Errorf("vaultctl computers does not show the revocation:\n%s", out)
	}
	// The other computer is unaffected.
	e.a.must("config", "list")
}

// TestFailedReenrollKeepsIdentity: running enroll again on an enrolled
// computer with a bad or used token must not break its identity.
func TestFailedReenrollKeepsIdentity(t *testing.T) {
	e := newEnv(t)
	used := e.v.token("acme")
	(&agent{t: t, state: filepath.Join(e.root, "other")}).must("enroll", "-vault", e.v.addr, "-token", used)
	if r := e.a.run("enroll", "-vault", e.v.addr, "-token", used); r.code == 0 {
		t.Fatalf("enroll with a used token succeeded: %s", r)
	}
	if r := e.a.run("config", "list"); r.code != 0 {
		t.Fatalf("a failed re-enrolment destroyed the computer's working identity: %s", r)
	}
}

// agentClient connects as the agent, with its client certificate.
func agentClient(t *testing.T, stateDir string) (*client.Client, *wire.Computer) {
	t.Helper()
	st, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	id, cert, pool, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(id.Vault, cert, pool, nil)
	comp, err := c.Computer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c, comp
}

func frame(kind uint8, id [32]byte, plain []byte) []byte {
	payload, fl := wire.Compress(nil, plain)
	return wire.AppendFrame(nil, &wire.Frame{ID: id, Kind: kind, Flags: fl, PlainLen: uint32(len(plain)), Payload: payload})
}

// storeState is what must not change after a refused request.
func storeState(t *testing.T, v *vaultProc) (int64, string) {
	t.Helper()
	r := v.ctl("verify")
	if r.code != 0 {
		t.Fatalf("verify: %s", r)
	}
	return dirSize(t, filepath.Join(v.dir, "packs")), r.stdout
}

// TestProtocolErrors sends what a broken or hostile agent might: each gets
// its error code and leaves the store as it was.
func TestProtocolErrors(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 2)
	g.write("a.txt", g.text("a", 1000), 0o644)
	e.a.backup("home")
	ctx := context.Background()
	c, comp := agentClient(t, e.a.state)
	hs := keys.NewHasher([32]byte(comp.ChunkKey))
	size0, verify0 := storeState(t, e.v)

	good := []byte("a chunk whose id is right")
	goodID := [32]byte(hs.Sum(good))
	bad := []byte("a chunk that claims another chunk's id")

	expect := func(what string, err error, code string) {
		t.Helper()
		if !client.IsCode(err, code) {
			t.Errorf("%s: err = %v, want code %q", what, err, code)
			return
		}
		var ce *client.Error
		if e, ok := err.(*client.Error); ok {
			ce = e
		}
		if ce != nil && len(ce.Message) < 10 {
			t.Errorf("%s: message %q does not explain", what, ce.Message)
		}
	}

	expect("upload to an unknown session", c.Upload(ctx, "0123456789abcdef0123456789abcdef", bytes.NewReader(frame(wire.FrameData, goodID, good))), wire.CodeUnknownSession)
	_, err := c.Lack(ctx, "nosuchsession", [][32]byte{goodID})
	expect("lack on an unknown session", err, wire.CodeUnknownSession)
	_, err = c.Commit(ctx, "nosuchsession", wire.Commit{Listing: []tree.ChunkRef{{ID: goodID, Len: 1}}})
	expect("commit of an unknown session", err, wire.CodeUnknownSession)

	s, err := c.Open(ctx, "home")
	if err != nil {
		t.Fatal(err)
	}
	if s.Previous != 1 {
		t.Errorf("session previous = %d, want 1", s.Previous)
	}
	_, err = c.Open(ctx, "nosuchconfig")
	expect("session for an unknown configuration", err, wire.CodeNotFound)

	expect("garbage upload", c.Upload(ctx, s.ID, bytes.NewReader([]byte("this is not a frame stream"))), wire.CodeBadRequest)
	trunc := frame(wire.FrameData, goodID, good)
	expect("truncated frame", c.Upload(ctx, s.ID, bytes.NewReader(trunc[:len(trunc)-1])), wire.CodeBadRequest)
	expect("unknown kind", c.Upload(ctx, s.ID, bytes.NewReader(frame(7, goodID, good))), wire.CodeBadRequest)
	lie := wire.AppendFrame(nil, &wire.Frame{ID: goodID, Kind: wire.FrameData, PlainLen: uint32(len(good)) + 1, Payload: good})
	expect("declared length wrong", c.Upload(ctx, s.ID, bytes.NewReader(lie)), wire.CodeBadRequest)
	notz := wire.AppendFrame(nil, &wire.Frame{ID: goodID, Kind: wire.FrameData, Flags: wire.FlagZstd, PlainLen: uint32(len(good)), Payload: good})
	expect("zstd flag on a raw payload", c.Upload(ctx, s.ID, bytes.NewReader(notz)), wire.CodeBadRequest)
	// A good chunk followed by a mismatched one: nothing of the batch stays.
	batch := append(frame(wire.FrameData, goodID, good), frame(wire.FrameData, goodID, bad)...)
	expect("chunk whose content does not match its id", c.Upload(ctx, s.ID, bytes.NewReader(batch)), wire.CodeMismatch)
	otherID := [32]byte(hs.Sum([]byte("yet another")))
	expect("lone mismatched chunk", c.Upload(ctx, s.ID, bytes.NewReader(frame(wire.FrameData, otherID, bad))), wire.CodeMismatch)
	big := make([]byte, wire.MaxUploadBody+1)
	expect("oversize upload", c.Upload(ctx, s.ID, bytes.NewReader(big)), wire.CodeTooLarge)
	_, err = c.Lack(ctx, s.ID, make([][32]byte, wire.MaxLackIDs+1))
	expect("oversize lack query", err, wire.CodeTooLarge)
	// A listing referencing a chunk the vault lacks cannot commit.
	var lb bytes.Buffer
	lw, _ := tree.NewWriter(&lb)
	lw.Write(&tree.Node{Path: []byte("x"), Type: tree.TypeFile, Size: int64(len(good)), Chunks: []tree.ChunkRef{{ID: goodID, Len: uint32(len(good))}}})
	lid := [32]byte(hs.Sum(lb.Bytes()))
	_, err = c.Commit(ctx, s.ID, wire.Commit{Listing: []tree.ChunkRef{{ID: lid, Len: uint32(lb.Len())}}})
	expect("commit of a listing the vault lacks", err, wire.CodeMissingChunk)
	_, err = c.Commit(ctx, s.ID, wire.Commit{})
	expect("commit of an empty listing", err, wire.CodeBadRequest)

	lack, err := c.Lack(ctx, s.ID, [][32]byte{goodID, otherID})
	if err != nil || !lack[0] || !lack[1] {
		t.Errorf("after refused uploads the vault says it lacks %v (%v), want both", lack, err)
	}
	size1, verify1 := storeState(t, e.v)
	if size1 != size0 || verify1 != verify0 {
		t.Errorf("refused requests left a trace: packs %d -> %d bytes; verify %q -> %q", size0, size1, verify0, verify1)
	}

	// The listing uploaded but its file chunk missing: still no version.
	if err := c.Upload(ctx, s.ID, bytes.NewReader(frame(wire.FrameListing, lid, lb.Bytes()))); err != nil {
		t.Fatal(err)
	}
	_, err = c.Commit(ctx, s.ID, wire.Commit{Listing: []tree.ChunkRef{{ID: lid, Len: uint32(lb.Len())}}})
	expect("commit of a listing whose file chunk is missing", err, wire.CodeMissingChunk)
	if ms, err := c.Versions(ctx, "home"); err != nil || len(ms) != 1 {
		t.Errorf("versions after refused commits: %d (%v), want 1", len(ms), err)
	}
	if err := c.Abort(ctx, s.ID); err != nil {
		t.Errorf("abort: %v", err)
	}
	expect("upload after abort", c.Upload(ctx, s.ID, bytes.NewReader(frame(wire.FrameData, goodID, good))), wire.CodeUnknownSession)

	// Without a client certificate only health answers.
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Get("https://" + e.v.addr + wire.PathHealth)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("health without a certificate: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = hc.Get("https://" + e.v.addr + wire.PathComputer)
	if err != nil {
		t.Fatal(err)
	}
	var we wire.Error
	json.NewDecoder(resp.Body).Decode(&we)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || we.Code != wire.CodeUnauthorized || !strings.Contains(we.Message, "enrol") {
		t.Errorf("no client certificate: %d %+v", resp.StatusCode, we)
	}
	// The agent still backs up normally afterwards.
	if s := e.a.backup("home"); s.Version != 2 {
		t.Errorf("backup after the protocol errors committed version %d, want 2", s.Version)
	}
	if r := e.v.ctl("verify"); r.code != 0 {
		t.Errorf("verify: %s", r)
	}
}

// TestCompanyIsolation: a computer of one company can neither see nor
// probe another company's chunks, even for the same content.
func TestCompanyIsolation(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 6)
	content := g.text("shared", 5000)
	g.write("shared.txt", content, 0o644)
	e.a.backup("home")
	ctx := context.Background()
	ca, compA := agentClient(t, e.a.state)
	idA := [32]byte(keys.NewHasher([32]byte(compA.ChunkKey)).Sum(content))

	e.v.mustCtl("company", "create", "globex")
	b := &agent{t: t, state: filepath.Join(e.root, "agentB")}
	b.must("enroll", "-vault", e.v.addr, "-token", e.v.token("globex"), "-name", "pcB")
	b.must("config", "set", "home", "-path", e.src)
	cb, compB := agentClient(t, b.state)
	if bytes.Equal(compA.ChunkKey, compB.ChunkKey) || bytes.Equal(compA.GearKey, compB.GearKey) {
		t.Fatal("two companies got the same keys")
	}
	idB := [32]byte(keys.NewHasher([32]byte(compB.ChunkKey)).Sum(content))
	if idA == idB {
		t.Fatal("the same content has the same id in two companies")
	}
	s, err := cb.Open(ctx, "home")
	if err != nil {
		t.Fatal(err)
	}
	lack, err := cb.Lack(ctx, s.ID, [][32]byte{idA, idB})
	if err != nil || !lack[0] || !lack[1] {
		t.Errorf("globex asking for acme's chunk: lack = %v (%v), want both lacking", lack, err)
	}
	// Each download must answer with exactly one frame per id asked for,
	// with that id and the expected status: a check inside a callback that
	// never runs would prove nothing.
	var frames []wire.Frame
	collect := func(f *wire.Frame) error {
		c := *f
		c.Payload = bytes.Clone(f.Payload)
		frames = append(frames, c)
		return nil
	}
	if err := cb.GetChunks(ctx, [][32]byte{idA}, collect); err != nil {
		t.Errorf("globex downloading acme's chunk: %v", err)
	}
	if len(frames) != 1 || frames[0].ID != idA || frames[0].Kind != wire.StatusMissing || frames[0].PlainLen != 0 || len(frames[0].Payload) >= len(content)/2 {
		t.Errorf("globex downloading acme's chunk got %s, want one frame with status missing and at most a message", describeFrames(frames))
	}
	// acme's own computer reads it, and it is the content.
	frames = nil
	if err := ca.GetChunks(ctx, [][32]byte{idA}, collect); err != nil {
		t.Errorf("acme downloading its own chunk: %v", err)
	}
	if len(frames) != 1 || frames[0].ID != idA || frames[0].Kind != wire.StatusOK {
		t.Errorf("acme downloading its own chunk got %s, want one frame with status ok", describeFrames(frames))
	} else if got, err := wire.Decompress(nil, frames[0].Flags, frames[0].Payload, frames[0].PlainLen); err != nil || !bytes.Equal(got, content) {
		t.Errorf("acme's chunk: %d bytes (%v), want the %d bytes of shared.txt", len(got), err, len(content))
	}
	// Oversize JSON is refused with its code.
	huge := wire.Config{Name: "huge", Paths: []string{"/" + strings.Repeat("x", wire.MaxJSONBody)}}
	if _, err := cb.PutConfig(ctx, huge); !client.IsCode(err, wire.CodeTooLarge) {
		t.Errorf("a configuration over %d bytes: %v, want %s", wire.MaxJSONBody, err, wire.CodeTooLarge)
	}
}

func describeFrames(fs []wire.Frame) string {
	if len(fs) == 0 {
		return "no frame"
	}
	var parts []string
	for _, f := range fs {
		parts = append(parts, fmt.Sprintf("{id %x status %d, plain length %d, %d payload bytes}", f.ID[:8], f.Kind, f.PlainLen, len(f.Payload)))
	}
	return fmt.Sprintf("%d frames: %s", len(fs), strings.Join(parts, " "))
}
