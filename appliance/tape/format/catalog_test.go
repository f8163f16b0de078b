package format_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/tape/format"
)

func catalogBytes(t *testing.T, h format.CatalogHeader, files []format.CatalogFile, ids [][]format.CatalogIDs) []byte {
	t.Helper()
	var buf bytes.Buffer
	cw, err := format.NewCatalogWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		if err := cw.File(f, ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sampleCatalog() (format.CatalogHeader, []format.CatalogFile, [][]format.CatalogIDs) {
	when := time.Unix(1.7e9, 0).UTC()
	h := format.CatalogHeader{Barcode: "TAPE01L5", Cartridge: "u1", Pool: "daily", MediaSet: "set1", SetCartridges: []string{"TAPE01L5"},
		SetCreated: when, File: 3, Chunks: 3, Written: when}
	files := []format.CatalogFile{
		{File: 1, MediaSet: "set1", Written: when, Bytes: 1 << 20, Block: 2, BlockKnown: true},
		{File: 2, MediaSet: "set1", Written: when, Bytes: 1 << 18, Versions: []format.CatalogVersion{{VersionInfo: format.VersionInfo{
			Company: "acme", Computer: "pc-1", Config: "home", Seq: 1, ManifestID: strings.Repeat("ab", 32), MediaSet: "set1",
			Files: []format.FileRef{{Barcode: "TAPE01L5", File: 1}, {Barcode: "TAPE01L5", File: 2}}}, Written: when}}},
	}
	ids := [][]format.CatalogIDs{
		{{Company: "acme", IDs: [][32]byte{{1}, {2}}}},
		{{Company: "bolt", IDs: [][32]byte{{3}}}},
	}
	return h, files, ids
}

// A catalog file reads back as written; the writer refuses a header that
// does not match what it was given.
func TestCatalogFileRoundTrip(t *testing.T) {
	h, files, ids := sampleCatalog()
	b := catalogBytes(t, h, files, ids)
	var got []string
	err := format.ReadCatalog(bytes.NewReader(b), func(g format.CatalogHeader) error {
		got = append(got, fmt.Sprintf("%s %s %s file %d chunks %d", g.Barcode, g.Cartridge, g.MediaSet, g.File, g.Chunks))
		return nil
	}, func(f format.CatalogFile, ids []format.CatalogIDs) error {
		got = append(got, fmt.Sprintf("file %d bytes %d block %d/%v versions %d ids %v", f.File, f.Bytes, f.Block, f.BlockKnown, len(f.Versions), ids))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "TAPE01L5 u1 set1 file 3 chunks 3|file 1 bytes 1048576 block 2/true versions 0 ids [{acme [" + fmt.Sprint([32]byte{1}) + " " +
		fmt.Sprint([32]byte{2}) + "]}]|file 2 bytes 262144 block 0/false versions 1 ids [{bolt [" + fmt.Sprint([32]byte{3}) + "]}]"
	if strings.Join(got, "|") != want {
		t.Fatalf("read back:\n%s\nwant:\n%s", strings.Join(got, "|"), want)
	}
	// A data file is no catalog file.
	var data bytes.Buffer
	tw := tar.NewWriter(&data)
	format.WriteJSON(tw, format.FileHeadName, format.FileHeader{}, time.Now())
	tw.Close()
	if err := format.ReadCatalog(&data, func(format.CatalogHeader) error { return nil }, nil); !errors.Is(err, format.ErrNotCatalog) {
		t.Fatalf("a data file read as a catalog: %v", err)
	}
	h.Chunks = 4
	var buf bytes.Buffer
	cw, _ := format.NewCatalogWriter(&buf, h)
	cw.File(files[0], ids[0])
	cw.File(files[1], ids[1])
	if err := cw.Close(); err == nil {
		t.Fatal("a catalog whose header counts a chunk more than it lists was written")
	}
}

// Hostile catalog files: every count and name is checked against the
// header and the limits, with ErrMalformed, never a panic.
func TestCatalogFileMalformed(t *testing.T) {
	h, files, ids := sampleCatalog()
	rewrite := func(fn func(name string, body []byte) (string, []byte, bool)) []byte {
		src := tar.NewReader(bytes.NewReader(catalogBytes(t, h, files, ids)))
		var out bytes.Buffer
		tw := tar.NewWriter(&out)
		for {
			th, err := src.Next()
			if err != nil {
				break
			}
			var body bytes.Buffer
			body.ReadFrom(src)
			name, b, keep := fn(th.Name, body.Bytes())
			if keep {
				format.WriteMember(tw, name, b, 0o644, th.ModTime)
			}
		}
		tw.Close()
		return out.Bytes()
	}
	cases := map[string]func(name string, body []byte) (string, []byte, bool){
		"ids cut short": func(n string, b []byte) (string, []byte, bool) {
			if strings.HasSuffix(n, "acme.ids") {
				return n, b[:40], true
			}
			return n, b, true
		},
		"file.json missing": func(n string, b []byte) (string, []byte, bool) { return n, b, !strings.HasSuffix(n, "2/file.json") },
		"ids of another company": func(n string, b []byte) (string, []byte, bool) {
			return strings.Replace(n, "bolt.ids", "acme.ids", 1), b, true
		},
		"file numbered wrong": func(n string, b []byte) (string, []byte, bool) {
			if strings.HasSuffix(n, "1/file.json") {
				return n, bytes.Replace(b, []byte(`"file":1`), []byte(`"file":7`), 1), true
			}
			return n, b, true
		},
		"huge chunk count": func(n string, b []byte) (string, []byte, bool) {
			if strings.HasSuffix(n, "2/file.json") {
				return n, bytes.Replace(b, []byte(`"count":1`), []byte(`"count":100000000`), 1), true
			}
			return n, b, true
		},
		"header claims a million files": func(n string, b []byte) (string, []byte, bool) {
			if n == format.CatalogName {
				return n, bytes.Replace(b, []byte(`"file": 3`), []byte(`"file": 1000000`), 1), true
			}
			return n, b, true
		},
		"header file 1": func(n string, b []byte) (string, []byte, bool) {
			if n == format.CatalogName {
				return n, bytes.Replace(b, []byte(`"file": 3`), []byte(`"file": 1`), 1), true
			}
			return n, b, true
		},
		"member after the end": func(n string, b []byte) (string, []byte, bool) {
			if strings.HasSuffix(n, "bolt.ids") {
				return n, b, true
			}
			return n, b, true
		},
	}
	for name, fn := range cases {
		b := rewrite(fn)
		if name == "member after the end" {
			var out bytes.Buffer
			tw := tar.NewWriter(&out)
			src := tar.NewReader(bytes.NewReader(b))
			for {
				th, err := src.Next()
				if err != nil {
					break
				}
				var body bytes.Buffer
				body.ReadFrom(src)
				format.WriteMember(tw, th.Name, body.Bytes(), 0o644, th.ModTime)
			}
			format.WriteMember(tw, "extra", []byte("x"), 0o644, time.Now())
			tw.Close()
			b = out.Bytes()
		}
		handed := 0
		err := format.ReadCatalog(bytes.NewReader(b), func(format.CatalogHeader) error { return nil },
			func(format.CatalogFile, []format.CatalogIDs) error { handed++; return nil })
		if !errors.Is(err, format.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
		if handed == len(files) && name != "header claims a million files" && name != "member after the end" {
			t.Errorf("%s: every data file handed over", name)
		}
	}
}
