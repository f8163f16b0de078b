package format_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/emu"
	"vaultnode/appliance/tape/format"
)

var sent = format.Sentinels{Filemark: drive.ErrFilemark, EndOfData: drive.ErrEndOfData, EarlyWarning: drive.ErrEarlyWarning}

// Every block is RecordSize bytes (the last one padded), the filemark
// ends the file, and the reader stops there.
func TestBlocksAndLabel(t *testing.T) {
	ctx := context.Background()
	tp := emu.NewTape("SN", 0)
	d := drive.New(tp, nil)
	if err := d.SetVariable(ctx); err != nil {
		t.Fatal(err)
	}
	l := format.Label{Format: format.Version, Barcode: "TAPE01L5", UUID: "u1", Pool: "daily", Labelled: time.Unix(1e9, 0).UTC()}
	bw := format.NewBlockWriter(ctx, d, sent)
	prog := bytes.Repeat([]byte("x"), format.RecordSize+1000)
	if err := format.WriteLabelFile(bw, l, prog); err != nil {
		t.Fatal(err)
	}
	if err := bw.Close(); err != nil {
		t.Fatal(err)
	}
	if bw.Written()%format.RecordSize != 0 || bw.Written() < 2*format.RecordSize {
		t.Fatalf("%d bytes written: not whole records", bw.Written())
	}
	d.WriteFilemarks(ctx, 1)
	// A second file, then read both back.
	bw = format.NewBlockWriter(ctx, d, sent)
	bw.Write([]byte("second"))
	bw.Close()
	d.WriteFilemarks(ctx, 1)
	d.Rewind(ctx)
	br := format.NewBlockReader(ctx, d, sent)
	got, err := format.ReadLabelFile(br)
	if err != nil || got != l {
		t.Fatalf("label %+v, %v", got, err)
	}
	if err := br.Drain(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(format.NewBlockReader(ctx, d, sent))
	if err != nil || len(b) != format.RecordSize || !bytes.HasPrefix(b, []byte("second")) {
		t.Fatalf("second file: %d bytes, %v", len(b), err)
	}
	if _, err := io.ReadAll(format.NewBlockReader(ctx, d, sent)); !errors.Is(err, format.ErrEndOfData) {
		t.Fatalf("past the last file: %v, want ErrEndOfData", err)
	}
}

// The early warning is remembered, the block written; the end of medium
// is an error.
func TestEarlyWarning(t *testing.T) {
	ctx := context.Background()
	tp := emu.NewTape("SN", 0)
	tp.Capacity, tp.EarlyWarning = 3*format.RecordSize, format.RecordSize+10
	d := drive.New(tp, nil)
	bw := format.NewBlockWriter(ctx, d, sent)
	if _, err := bw.Write(make([]byte, 2*format.RecordSize)); err != nil || !bw.EarlyWarning() {
		t.Fatalf("write past the early warning: %v, warning %v", err, bw.EarlyWarning())
	}
	if _, err := bw.Write(make([]byte, 2*format.RecordSize)); !errors.Is(err, drive.ErrEndOfMedium) {
		t.Fatalf("write past the capacity: %v", err)
	}
}

func TestHostileMembers(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	format.WriteMember(tw, format.LabelName, []byte(strings.Repeat("{", format.MaxJSON+1)), 0o644, time.Now())
	tw.Close()
	if _, err := format.ReadLabelFile(&buf); !errors.Is(err, format.ErrMalformed) || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized label: %v", err)
	}
	buf.Reset()
	tw = tar.NewWriter(&buf)
	format.WriteJSON(tw, "something-else", 1, time.Now())
	tw.Close()
	if _, err := format.ReadLabelFile(&buf); !errors.Is(err, format.ErrNotLabel) {
		t.Fatalf("not a label: %v", err)
	}
	if _, err := format.ReadLabelFile(bytes.NewReader(make([]byte, 1024))); !errors.Is(err, format.ErrNotLabel) {
		t.Fatalf("zeros: %v", err)
	}
	var id [32]byte
	id[0] = 0xab
	for _, plain := range []bool{false, true} {
		n := format.ChunkMember("acme", id, plain)
		co, got, pl, ok := format.ParseChunkMember(n)
		if !ok || co != "acme" || got != id || pl != plain {
			t.Fatalf("%s: %v %v %v %v", n, co, got, pl, ok)
		}
	}
	for _, bad := range []string{"vaultnode/acme/chunks/ab/zz", "vaultnode/acme/chunks/cd/ab" + strings.Repeat("0", 62), "../x", "vaultnode/acme/versions/a/b/1/version.json"} {
		if _, _, _, ok := format.ParseChunkMember(bad); ok {
			t.Errorf("%q parsed as a chunk", bad)
		}
	}
}

// FuzzReadLabelFile: whatever a cartridge's first file holds, reading its
// label answers an error or a label, never a panic, within the limits.
func FuzzReadLabelFile(f *testing.F) {
	var buf bytes.Buffer
	format.WriteLabelFile(&buf, format.Label{Format: format.Version, Barcode: "TAPE01L5", UUID: "u", Pool: "p", Labelled: time.Unix(1e9, 0)}, []byte("prog"))
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:700])
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := format.ReadLabelFile(bytes.NewReader(b))
		if err == nil && (l.Barcode == "" || l.UUID == "") {
			t.Fatalf("label without barcode or uuid accepted: %+v", l)
		}
	})
}
