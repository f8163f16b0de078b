package testtree

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// Change is one edit Mutate made. Path is relative to the root.
type Change struct {
	Kind string // edit, append, truncate, add, mkdir, delete, rename-from, rename-to, chmod, xattr, touch
	Path []byte
}

func (c Change) String() string { return fmt.Sprintf("%s %q", c.Kind, c.Path) }

// Mutate changes a tree the way its users would: edits, appends and
// truncations of files, new files and directories, deletions, renames,
// mode, xattr and mtime changes, each on a different regular file chosen by
// seed. The same tree and seed give the same changes.
func Mutate(root string, seed int64) error {
	_, err := MutateReport(root, seed)
	return err
}

// MutateReport is Mutate, also saying what it changed.
func MutateReport(root string, seed int64) ([]Change, error) {
	var cands [][]byte
	protected := map[string]bool{} // directories that are immutable or append-only
	err := walk(root, false, func(e *entry) error {
		a := e.stx.Attributes & e.stx.Attributes_mask
		prot := a&(unix.STATX_ATTR_IMMUTABLE|unix.STATX_ATTR_APPEND) != 0
		if e.isDir() && prot {
			protected[string(e.rel)] = true
		}
		if !e.isFile() || prot || e.stx.Nlink != 1 || len(e.rel) > 1000 {
			return nil
		}
		if protected[string(parent(e.rel))] || bytes.HasPrefix(e.rel, []byte("wide/")) {
			return nil
		}
		cands = append(cands, e.rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("mutate %s: %w", root, err)
	}
	r := rand.New(rand.NewPCG(uint64(seed), 0x7e577ee))
	r.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	pick := func() ([]byte, error) {
		if len(cands) == 0 {
			return nil, errNoCandidate
		}
		c := cands[0]
		cands = cands[1:]
		return c, nil
	}
	p := func(rel []byte) string { return filepath.Join(root, string(rel)) }
	var changes []Change
	ops := []func() error{
		func() error { // edit in the middle
			rel, err := pick()
			if err != nil {
				return err
			}
			f, err := os.OpenFile(p(rel), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			if _, err := f.WriteAt([]byte(fmt.Sprintf("<edited %d>", seed)), fi.Size()/2); err != nil {
				return err
			}
			changes = append(changes, Change{"edit", rel})
			return nil
		},
		func() error { // append
			rel, err := pick()
			if err != nil {
				return err
			}
			f, err := os.OpenFile(p(rel), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := f.WriteString("appended line\n"); err != nil {
				return err
			}
			changes = append(changes, Change{"append", rel})
			return nil
		},
		func() error { // truncate
			rel, err := pick()
			if err != nil {
				return err
			}
			fi, err := os.Stat(p(rel))
			if err != nil {
				return err
			}
			if err := os.Truncate(p(rel), fi.Size()/3+1); err != nil {
				return err
			}
			changes = append(changes, Change{"truncate", rel})
			return nil
		},
		func() error { // add a file next to one
			rel, err := pick()
			if err != nil {
				return err
			}
			nrel := tree.Join(parent(rel), fmt.Sprintf("added-%d", seed))
			if err := os.WriteFile(p(nrel), content(string(nrel), 777), 0o644); err != nil {
				return err
			}
			changes = append(changes, Change{"add", nrel})
			return nil
		},
		func() error { // add a directory with a file
			nrel := []byte(fmt.Sprintf("new-dir-%d", seed))
			if err := os.Mkdir(p(nrel), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p(tree.Join(nrel, "file")), []byte("new"), 0o644); err != nil {
				return err
			}
			changes = append(changes, Change{"mkdir", nrel}, Change{"add", tree.Join(nrel, "file")})
			return nil
		},
		func() error { // delete
			rel, err := pick()
			if err != nil {
				return err
			}
			if err := os.Remove(p(rel)); err != nil {
				return err
			}
			changes = append(changes, Change{"delete", rel})
			return nil
		},
		func() error { // rename within the directory
			rel, err := pick()
			if err != nil {
				return err
			}
			nrel := tree.Join(parent(rel), fmt.Sprintf("renamed-%d", seed))
			if err := os.Rename(p(rel), p(nrel)); err != nil {
				return err
			}
			changes = append(changes, Change{"rename-from", rel}, Change{"rename-to", nrel})
			return nil
		},
		func() error { // chmod
			rel, err := pick()
			if err != nil {
				return err
			}
			fi, err := os.Lstat(p(rel))
			if err != nil {
				return err
			}
			if err := os.Chmod(p(rel), fi.Mode().Perm()^0o011); err != nil {
				return err
			}
			changes = append(changes, Change{"chmod", rel})
			return nil
		},
		func() error { // set an xattr
			rel, err := pick()
			if err != nil {
				return err
			}
			if err := unix.Lsetxattr(p(rel), "user.mutated", []byte(fmt.Sprint(seed)), 0); err != nil {
				return err
			}
			changes = append(changes, Change{"xattr", rel})
			return nil
		},
		func() error { // touch mtime only
			rel, err := pick()
			if err != nil {
				return err
			}
			ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: 1111111111, Nsec: 111}}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p(rel), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
			changes = append(changes, Change{"touch", rel})
			return nil
		},
	}
	for _, op := range ops {
		if err := op(); err != nil {
			return changes, fmt.Errorf("mutate %s: %w", root, err)
		}
	}
	return changes, nil
}

func parent(rel []byte) []byte {
	i := bytes.LastIndexByte(rel, '/')
	if i < 0 {
		return []byte(".")
	}
	return rel[:i]
}
