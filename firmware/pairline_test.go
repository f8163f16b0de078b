package firmware

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"vaultnode/appliance/pair"
)

// TestPairText: the status screen's pair section from what vaultd's admin
// socket answers (a pair.Status, encoded as vaultd encodes it).
func TestPairText(t *testing.T) {
	dir, err := os.MkdirTemp("", "pl") // short: a socket path is at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if got := pairText(dir); got != "" {
		t.Fatalf("no vaultd: %q", got)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	st := pair.Status{ID: "a", State: "Leader", Leader: "a", Term: 7, LastIndex: 120, Commit: 120, Applied: 119,
		Members: []pair.MemberStatus{
			{Member: pair.Member{ID: "a", Agent: "10.0.0.1:7443"}, Voter: true, LagCommands: 1},
			{Member: pair.Member{ID: "b", Agent: "10.0.0.2:7443"}, Voter: true, LagCommands: 5, LagBytes: 3 << 20, Contact: "reachable"},
			{Member: pair.Member{ID: "w", Witness: true}, Voter: true, LagCommands: -1, Contact: "unreachable: dial tcp: refused"},
		},
		Behind: []pair.Behind{{Member: "b", Since: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Reason: "copy failed"}}}
	var body atomic.Value
	b, _ := json.Marshal(st)
	body.Store(b)
	code := atomic.Int32{}
	code.Store(200)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/admin/pair" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(code.Load()))
		w.Write(body.Load().([]byte))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	got := pairText(dir)
	for _, want := range []string{
		"pair: member a, leader; leader a, term 7, log index 120 (commit 120, applied 119)",
		"b          data", "lag 5 entries, 3 MiB", "reachable",
		"w          witness", "lag unknown", "UNREACHABLE",
		"! b is behind since 2026-12-01 10:00 (copy failed)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("pair section lacks %q:\n%s", want, got)
		}
	}
	code.Store(400)
	body.Store([]byte(`{"code":"bad_request","message":"this vault is not a member of a pair"}`))
	if got := pairText(dir); got != "" {
		t.Errorf("a single vault: %q", got)
	}
}
