package backup

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

func TestNamesSpillsAndMerges(t *testing.T) {
	for _, count := range []int{0, 5, 99, 100, 101, 1000} {
		t.Run(fmt.Sprint(count), func(t *testing.T) {
			old := spillAt
			spillAt = 100
			defer func() { spillAt = old }()
			dir := t.TempDir()
			var want []string
			for i := range count {
				name := fmt.Sprintf("f%05d-\n%x", (i*7919)%100000, i) // newlines in names survive the spill
				if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
					t.Fatal(err)
				}
				want = append(want, name)
			}
			sort.Strings(want)
			d, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			spill := t.TempDir()
			n, err := readNames(d, spill)
			if err != nil {
				t.Fatal(err)
			}
			defer n.close()
			var got []string
			for {
				s, ok, err := n.next()
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				got = append(got, s)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("got %d names out of order or missing, want %d", len(got), len(want))
			}
			if count > 100 && len(n.files) == 0 {
				t.Fatal("a directory wider than the spill limit was sorted in memory")
			}
			left, _ := os.ReadDir(spill)
			if len(left) != 0 {
				t.Fatalf("%d spill files left behind", len(left))
			}
		})
	}
}
