package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// TestDataDirFromEnv: on the appliance the firmware sets VAULTCTL_DATA, so
// vaultctl without -data reaches the running vault's socket there; -data
// still wins, and var/vault stays the default elsewhere.
func TestDataDirFromEnv(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		env  string
		args []string
		want string
	}{
		{dir, []string{"company", "list"}, filepath.Join(dir, "admin.sock")},
		{dir, []string{"-data", "/elsewhere", "company", "list"}, "/elsewhere/admin.sock"},
		{"", []string{"company", "list"}, "var/vault/admin.sock"},
	} {
		t.Setenv(DataEnv, tt.env)
		err := run(context.Background(), tt.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s=%q %v: %v, want a dial error naming %s", DataEnv, tt.env, tt.args, err, tt.want)
		}
	}
}

// TestDiskNeedsTheFirmware: vaultctl disk talks to the firmware's control
// socket and says so when there is none.
func TestDiskNeedsTheFirmware(t *testing.T) {
	fwSocket = filepath.Join(t.TempDir(), "control.sock")
	err := run(context.Background(), []string{"disk", "replace", "vdf"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "works on the appliance only") {
		t.Errorf("disk replace without a firmware: %v", err)
	}
	if err := run(context.Background(), []string{"disk", "replace"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Errorf("disk replace without a disk: %v", err)
	}
}
