package firmware

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func TestTapeLine(t *testing.T) {
	dir, err := os.MkdirTemp("", "tl") // short: a socket path is at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if got := tapeLine(dir); got != "" {
		t.Fatalf("no vaultd: %q", got)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var body atomic.Value
	body.Store(`{"library":true,"status":{"busy":true,"operation":"tape job","barcode":"TAPE01L5","bytes":10485760,"bytes_per_second":2097152,"cartridges":["TAPE01L5"],"alerts":["TapeAlert 20 (critical): Clean now"],
		"drives":[{"drive":1,"barcode":"TAPE01L5","pool":"daily","bytes":10485760,"busy":true,"bytes_per_second":3145728},{"drive":2,"bytes":0,"error":"hardware error"}]}}`)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/admin/tape" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(body.Load().(string)))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	got := tapeLine(dir)
	for _, want := range []string{"tape job on TAPE01L5", "10 MiB at 2.0 MiB/s", "1 TapeAlert flags", "Clean now",
		"\n  drive 1: busy, TAPE01L5 loaded, pool daily, wrote 10 MiB at 3.0 MiB/s\n", "\n  drive 2: idle; error: hardware error\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("tape line %q lacks %q", got, want)
		}
	}
	body.Store(`{"library":false}`)
	if got := tapeLine(dir); got != "" {
		t.Errorf("no library: %q", got)
	}
}
