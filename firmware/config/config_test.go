package config

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSaveLoadAndPassword(t *testing.T) {
	path := filepath.Join(t.TempDir(), "etc", "config.json")
	if _, err := Load(path); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load of missing file: %v", err)
	}
	h, err := HashPassword("s3cret-pass")
	if err != nil {
		t.Fatal(err)
	}
	c := Config{Hostname: "vault1", Network: Network{DHCP: true}, Password: h, TimeZone: "UTC",
		NTP: "pool.ntp.org", Data: Data{Level: "raid1", Disks: []string{"data1", "data2"}}}
	if err := Save(path, c); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	c.Version = Version
	if diff := cmp.Diff(c, got); diff != "" {
		t.Fatal(diff)
	}
	for _, tt := range []struct {
		pw   string
		want bool
	}{{"s3cret-pass", true}, {"s3cret-pasS", false}, {"", false}} {
		if CheckPassword(got.Password, tt.pw) != tt.want {
			t.Errorf("CheckPassword(%q) != %v", tt.pw, tt.want)
		}
	}
}
