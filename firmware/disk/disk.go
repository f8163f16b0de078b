// Package disk finds the appliance's disks, formats and mounts them (the
// system disk holding the saved configuration, the data volume's ext4).
// The md arrays are firmware/raid's.
package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"vaultnode/firmware/reaper"
)

// Disk is a whole block device.
type Disk struct {
	Name  string // kernel name, e.g. vdb
	ID    string // virtio serial, or the name when there is none
	Size  int64
	Blank bool // no signature in the first MiB
}

// Dev is the device node.
func (d Disk) Dev() string { return "/dev/" + d.Name }

// List returns the virtio and SCSI disks, sorted by name.
func List() ([]Disk, error) {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	var out []Disk
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "vd") && !strings.HasPrefix(n, "sd") {
			continue
		}
		d := Disk{Name: n, ID: n}
		if b, err := os.ReadFile(filepath.Join("/sys/block", n, "serial")); err == nil && len(bytes.TrimSpace(b)) > 0 {
			d.ID = string(bytes.TrimSpace(b))
		}
		if b, err := os.ReadFile(filepath.Join("/sys/block", n, "size")); err == nil {
			sectors, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			d.Size = sectors * 512
		}
		d.Blank, _ = blank(d.Dev())
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func blank(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return false, err
	}
	for _, b := range buf[:n] {
		if b != 0 {
			return false, nil
		}
	}
	return true, nil
}

// Find returns the disk with the given ID.
func Find(disks []Disk, id string) (Disk, bool) {
	for _, d := range disks {
		if d.ID == id || d.Name == id {
			return d, true
		}
	}
	return Disk{}, false
}

// Tools runs the disk tools through the firmware's reaper.
type Tools struct {
	Reaper *reaper.Reaper
	Mke2fs string // path of mke2fs
}

func (t Tools) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	if _, err := t.Reaper.Output(ctx, cmd); err != nil {
		return err
	}
	return nil
}

// Mkfs makes an ext4 filesystem with label on dev.
func (t Tools) Mkfs(ctx context.Context, dev, label string) error {
	if err := t.run(ctx, t.Mke2fs, "-q", "-F", "-t", "ext4", "-L", label,
		"-E", "lazy_itable_init=1,lazy_journal_init=1", dev); err != nil {
		return fmt.Errorf("format %s: %w", dev, err)
	}
	return nil
}

// Mount mounts the ext4 filesystem on dev at dir.
func Mount(dev, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	if err := unix.Mount(dev, dir, "ext4", unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", dev, dir, err)
	}
	return nil
}

// Usage is the size and free space of a mounted filesystem.
type Usage struct {
	Mount       string
	Total, Free uint64
}

// UsageOf returns the usage of the filesystem mounted at dir.
func UsageOf(dir string) (Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return Usage{Mount: dir, Total: st.Blocks * uint64(st.Bsize), Free: st.Bavail * uint64(st.Bsize)}, nil
}
