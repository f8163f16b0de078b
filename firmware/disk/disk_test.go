package disk

import (
	"os"
	"path/filepath"
	"testing"
)

func TestBlank(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		size  int64
		write map[int64]byte
		want  bool
	}{
		{"zeros", 4 << 20, nil, true},
		{"small zeros", 4096, nil, true},
		{"ext4 magic", 4 << 20, map[int64]byte{1080: 0x53, 1081: 0xef}, false},
		{"md 1.2 superblock", 4 << 20, map[int64]byte{4096: 0xfc}, false},
		{"data after the first MiB only", 4 << 20, map[int64]byte{2 << 20: 1}, true},
	}
	for _, tt := range tests {
		p := filepath.Join(dir, tt.name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(tt.size); err != nil {
			t.Fatal(err)
		}
		for off, b := range tt.write {
			if _, err := f.WriteAt([]byte{b}, off); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
		got, err := blank(p)
		if err != nil || got != tt.want {
			t.Errorf("%s: blank=%v err=%v, want %v", tt.name, got, err, tt.want)
		}
	}
}

func TestFind(t *testing.T) {
	disks := []Disk{{Name: "vda", ID: "system"}, {Name: "vdb", ID: "data1"}, {Name: "sda", ID: "sda"}}
	for _, tt := range []struct {
		id, want string
		ok       bool
	}{{"data1", "vdb", true}, {"vdb", "vdb", true}, {"sda", "sda", true}, {"data9", "", false}} {
		d, ok := Find(disks, tt.id)
		if ok != tt.ok || d.Name != tt.want {
			t.Errorf("Find(%q) = %q, %v", tt.id, d.Name, ok)
		}
	}
}
