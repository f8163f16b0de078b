package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindInt(t *testing.T) {
	tests := []struct {
		name   string
		out    string
		want   int64
		wantOK bool
	}{
		{"one document", `{"files": 3, "bytes_sent": 1234}`, 1234, true},
		{"nested", `{"summary": {"bytes_sent": 99}}`, 99, true},
		{"lines, last wins", "{\"bytes_sent\": 1}\n{\"progress\": 5}\n{\"bytes_sent\": 7}\n", 7, true},
		{"absent", `{"bytes": 5}`, 0, false},
		{"not JSON", "backup done\n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := findInt([]byte(tt.out), "bytes_sent")
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("findInt = %d, %v; want %d, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestResticDataAdded(t *testing.T) {
	out := `{"message_type":"status","percent_done":0.5}
{"message_type":"summary","files_new":3,"data_added":4567,"total_bytes_processed":9}
`
	if n, ok := resticDataAdded([]byte(out)); !ok || n != 4567 {
		t.Errorf("resticDataAdded = %d, %v; want 4567, true", n, ok)
	}
	if _, ok := resticDataAdded([]byte(`{"message_type":"status"}`)); ok {
		t.Errorf("resticDataAdded found a summary where there is none")
	}
}

// TestParseWireCounts reads the vault's agent API series from /metrics
// text and refuses text that lacks one.
func TestParseWireCounts(t *testing.T) {
	text := `# HELP vaultnode_agent_api_connections Connections accepted and not yet closed.
# TYPE vaultnode_agent_api_connections gauge
vaultnode_agent_api_connections 2
# TYPE vaultnode_agent_api_received_bytes_total counter
vaultnode_agent_api_received_bytes_total 2.28385197e+08
vaultnode_agent_api_sent_bytes_total 68930
vaultnode_job_running{kind="prune"} 0
`
	w, err := parseWireCounts(strings.NewReader(text))
	if err != nil || w != (wireCounts{received: 228385197, sent: 68930, open: 2}) {
		t.Fatalf("parseWireCounts = %+v, %v", w, err)
	}
	short := strings.Replace(text, "vaultnode_agent_api_sent_bytes_total 68930\n", "", 1)
	if _, err := parseWireCounts(strings.NewReader(short)); err == nil {
		t.Fatal("text without the sent bytes was taken")
	}
}

func TestSelectPhases(t *testing.T) {
	got, err := selectPhases("no-change, initial")
	if err != nil || len(got) != 2 || got[0] != phaseInitial || got[1] != phaseNoChange {
		t.Errorf("selectPhases = %v, %v; want [initial no-change] in run order", got, err)
	}
	for _, bad := range []string{"", "initial,backup"} {
		if _, err := selectPhases(bad); err == nil {
			t.Errorf("selectPhases(%q) accepted", bad)
		}
	}
}

func TestRunOrder(t *testing.T) {
	for _, c := range []struct {
		n        int
		reversed bool
		want     string
	}{{2, false, "[0 1]"}, {2, true, "[1 0]"}, {1, true, "[0]"}, {3, true, "[2 1 0]"}} {
		if got := fmt.Sprint(runOrder(c.n, c.reversed)); got != c.want {
			t.Errorf("runOrder(%d, %v) = %s, want %s", c.n, c.reversed, got, c.want)
		}
	}
}

// TestMediansByTool: results of reversed runs keep the tools' order, so the
// median of each tool's phase is taken over that tool's runs only.
func TestMediansByTool(t *testing.T) {
	run := func(a, b float64) []*phaseResult {
		return []*phaseResult{{Tool: "vaultnode", Phase: "initial", WallSeconds: a}, {Tool: "restic", Phase: "initial", WallSeconds: b}}
	}
	m := medians([][]*phaseResult{run(1, 10), run(3, 30), run(2, 20)})
	if len(m) != 2 || m[0].Tool != "vaultnode" || m[0].WallSeconds != 2 || m[1].Tool != "restic" || m[1].WallSeconds != 20 {
		t.Fatalf("medians = %+v %+v", m[0], m[1])
	}
}

// TestAgentsNeedNoRestic: the many-agents run (make bench's "many agents at
// once") measures vaultnode alone, so it must not stop for a restic missing
// from PATH, as the phases do.
func TestAgentsNeedNoRestic(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no restic, nor anything else
	bin := t.TempDir()
	for _, p := range []string{"vaultd", "vaultctl", "vault-agent"} {
		// Present, so the check for them passes; empty, so the run fails
		// as soon as it starts one, before any real work.
		if err := os.WriteFile(filepath.Join(bin, p), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	args := func(extra ...string) []string {
		return append([]string{"-bin", bin, "-work", t.TempDir(), "-out", filepath.Join(t.TempDir(), "r.json"), "-warm", "-scale", "0.0001"}, extra...)
	}
	var out strings.Builder
	err := run(context.Background(), args(), &out, &out)
	if err == nil || !strings.Contains(err.Error(), "find restic") {
		t.Fatalf("phases without restic on PATH: %v, want a find restic error", err)
	}
	err = run(context.Background(), args("-agents", "1"), &out, &out)
	if err == nil {
		t.Fatal("agents with empty vaultnode programs succeeded")
	}
	if strings.Contains(err.Error(), "restic") {
		t.Fatalf("agents stopped for restic: %v", err)
	}
}

// TestTreeRefusals: -tree measures an existing tree, so it refuses what
// would swallow it before any work starts: a tree holding the work
// directory, an empty or missing directory, and many agents.
func TestTreeRefusals(t *testing.T) {
	tree := t.TempDir()
	if err := os.WriteFile(filepath.Join(tree, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	run1 := func(extra ...string) error {
		args := append([]string{"-bin", t.TempDir(), "-work", t.TempDir(), "-out", filepath.Join(t.TempDir(), "r.json"), "-warm"}, extra...)
		var out strings.Builder
		return run(context.Background(), args, &out, &out)
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"work directory inside", []string{"-tree", tree, "-work", filepath.Join(tree, "work")}, "holds the work directory"},
		{"empty", []string{"-tree", empty}, "is empty"},
		{"missing", []string{"-tree", filepath.Join(empty, "none")}, "no such file"},
		{"many agents", []string{"-tree", tree, "-agents", "2"}, "-agents"},
		// The incremental phase is left out when -phases is not given;
		// the run then stops at the missing programs.
		{"default phases", []string{"-tree", tree}, "run make build first"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := run1(tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run %q: %v, want an error saying %q", tt.args, err, tt.want)
			}
		})
	}
}

// TestWorkDirIsOwnModule: the work directory gets a go.mod, so that `go
// vet ./...` in the repository skips the corpora's files named .go (a
// benchmark run left the repository's vet failing on them); one already
// there is kept.
func TestWorkDirIsOwnModule(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "work")
	if err := ownModule(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil || !strings.HasPrefix(string(b), "module ") {
		t.Fatalf("go.mod: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ownModule(dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "go.mod")); string(b) != "module mine\n" {
		t.Errorf("an existing go.mod was replaced: %q", b)
	}
}
