package restore

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"vaultnode/agentkit/client"
	"vaultnode/agentkit/meta"
	"vaultnode/internal/keys"
	"vaultnode/internal/wire"
)

// wireVault is a fake vault behind the real agentkit/client: it answers
// POST /v1/chunks/get with frames encoded as vaultd encodes them, from
// its chunks, and answers chunk swap[id] where id is asked for.
type wireVault struct {
	chunks memSource
	swap   map[[32]byte][32]byte
	cutIn  [32]byte // the answer holding this chunk ends in its middle
}

func (v wireVault) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != "POST" || r.URL.Path != wire.PathChunks {
		return &http.Response{StatusCode: 404, Body: io.NopCloser(strings.NewReader(`{"code":"not_found"}`)), Header: http.Header{}, Request: r}, nil
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	ids, err := wire.ParseIDs(body, wire.MaxGetIDs)
	if err != nil {
		return nil, err
	}
	var out []byte
	for _, id := range ids {
		if s, ok := v.swap[id]; ok {
			id = s
		}
		f := wire.Frame{ID: id, Kind: wire.StatusMissing}
		if b, ok := v.chunks[id]; ok {
			f = wire.Frame{ID: id, Kind: wire.StatusOK, PlainLen: uint32(len(b)), Payload: b}
		}
		out = wire.AppendFrame(out, &f)
		if id == v.cutIn {
			out = out[:len(out)-len(f.Payload)/2]
			break
		}
	}
	return &http.Response{StatusCode: 200, Body: io.NopCloser(bytes.NewReader(out)),
		Header: http.Header{"Content-Type": {wire.MediaFrames}}, Request: r}, nil
}

// The hostile listing and a swapped chunk, served through the real client
// and its frame decoding: refused by name, nothing outside the target.
func TestHostileVaultOverTheWire(t *testing.T) {
	h := newHostile(t)
	f := h.content("a", "linked\n")
	f.Nlink = 2
	victim := h.content("victim", "the victim's content\n")
	other := h.content("other", "other file's secret!\n")
	esc := file("b-escape")
	esc.LinkTo, esc.Nlink = []byte("../outside/secret"), 2
	ok := file("c-link")
	ok.LinkTo, ok.Nlink = []byte("a"), 2
	v := wireVault{chunks: h.src, swap: map[[32]byte][32]byte{victim.Chunks[0].ID: other.Chunks[0].ID}}
	o := h.options()
	o.Source = client.New("vault.invalid:1", tls.Certificate{}, nil, func(http.RoundTripper) http.RoundTripper { return v })
	res, err := h.restore(o, f, esc, ok, other, victim)
	if err != nil {
		t.Fatal(err)
	}
	h.requireOutsideUnchanged()
	requireReported(t, "problem", res.Problems, "b-escape", `".." component`)
	requireReported(t, "problem", res.Problems, "victim", "answered chunk")
	requireAbsent(t, filepath.Join(h.target, "victim"))
	requireAbsent(t, filepath.Join(h.target, "b-escape"))
	requireContent(t, filepath.Join(h.target, "c-link"), "linked\n")
	requireContent(t, filepath.Join(h.target, "other"), "other file's secret!\n")
	if len(res.Problems) != 2 {
		t.Errorf("problems %q, want two", res.Problems)
	}
}

// The corpus through the real client, whose large stored chunks (1 MiB,
// and the sparse file's 256 KiB) the workers write as they arrive
// (chunkStream): every file is its content, holes kept; a large chunk
// damaged on the vault fails its file, found only once the chunk is
// written, and that file is removed, never named; so is one whose
// download stops in the middle of such a chunk.
func TestRestoreOverTheWireStreamsLargeChunks(t *testing.T) {
	forEachNaming(t, testRestoreOverTheWireStreamsLargeChunks)
}

func testRestoreOverTheWireStreamsLargeChunks(t *testing.T) {
	for _, fault := range []string{"none", "damaged", "cut"} {
		t.Run(fault, func(t *testing.T) {
			src := &countingSource{memSource: memSource{}}
			m, want := restoreCorpus(t, src)
			v := wireVault{chunks: src.memSource}
			for i, w := range want {
				if w.path != "r/e1-large" || fault == "none" {
					continue
				}
				id := keys.NewHasher(testKey).Sum(w.data[1<<20 : 2<<20])
				if fault == "damaged" {
					src.memSource[id][5] ^= 1
				} else {
					v.cutIn = id
				}
				want[i].bad = true
			}
			to := t.TempDir()
			o := Options{Source: client.New("vault.invalid:1", tls.Certificate{}, nil, func(http.RoundTripper) http.RoundTripper { return v }),
				ChunkKey: testKey, Manifest: m, Target: to, Meta: meta.Options{SkipOwner: true}, Workers: 4}
			res, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			checkCorpusRestored(t, to, res, want)
			problems := strings.Join(res.Problems, "\n")
			switch fault {
			case "damaged":
				if !strings.Contains(problems, "r/e1-large: NOT RESTORED") || !strings.Contains(problems, "does not match its id") {
					t.Errorf("damaged large chunk: problems %q", res.Problems)
				}
			case "cut":
				if !strings.Contains(problems, "r/e1-large: NOT RESTORED") || !strings.Contains(problems, "truncated payload") {
					t.Errorf("download cut in a large chunk: problems %q", res.Problems)
				}
			}
		})
	}
}
