package storagehealth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSaveLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "storage.json")
	r := Report{State: Degraded, Detail: "array md0 (raid6) is degraded", Updated: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC),
		Arrays: []Array{{Name: "md0", Level: "raid6", Disks: 4, Active: 3, Members: []Member{{Device: "vdb", ID: "data1", State: "in_sync"}}}}}
	if err := Save(p, r); err != nil {
		t.Fatal(err)
	}
	got, err := Load(p)
	if err != nil || got.State != Degraded || got.Arrays[0].Members[0].ID != "data1" || !got.Updated.Equal(r.Updated) {
		t.Fatalf("Load = %+v, %v", got, err)
	}
	if !got.Writable() {
		t.Error("a degraded array refuses writes")
	}
	if (Report{State: Failed}).Writable() {
		t.Error("a failed array accepts writes")
	}
}

func TestLoadRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"big":   `{"state":"clean","detail":"` + strings.Repeat("x", MaxReport) + `"}`,
		"state": `{"state":"fine"}`,
		"json":  `{"state":`,
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(p)
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		if name == "big" && !errors.Is(err, ErrTooLarge) {
			t.Errorf("big: %v, want ErrTooLarge", err)
		}
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file loaded")
	}
}
