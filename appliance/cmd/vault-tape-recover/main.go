// Command vault-tape-recover rebuilds a version's files from vaultnode tape
// files extracted with tar, with the company's exported key and nothing
// else of the appliance (docs/tape.md). It is built static
// (CGO_ENABLED=0) and written in file 0 of every cartridge.
//
//	mt -f /dev/nst0 asf N && tar -x -b 512 -f /dev/nst0 -C data   # each file version.json names
//	vault-tape-recover list -from data
//	vault-tape-recover catalog -from cat   # the cartridge's last file, extracted: what each data file holds
//	vault-tape-recover restore -key company.key -from data -version COMPANY/COMPUTER/CONFIG/SEQ -to /restore
package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"vaultnode/appliance/tape/format"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

const keyPrefix = "vaultnode-company-key-v1"

func usage() {
	fmt.Fprintf(os.Stderr, `usage:
  vault-tape-recover list -from DIR
  vault-tape-recover catalog -from DIR
  vault-tape-recover restore [-key FILE] -from DIR -version COMPANY/COMPUTER/CONFIG/SEQ -to OUT

DIR holds the tape files extracted with tar (mt asf N; tar -x -b 512 -f /dev/nst0 -C DIR).
"catalog" reads a cartridge's catalog file, its last tape file (mt eod; mt bsf 2; mt fsf 1;
tar -x -b 512 -f /dev/nst0 -C DIR), and prints every version on the cartridge with the
tape files to extract for it.
FILE is the company's key from "vaultctl company export-key" (not needed for a plain pool).
`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fl := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	from := fl.String("from", ".", "directory holding the extracted tape files")
	keyFile := fl.String("key", "", "the company's exported key")
	version := fl.String("version", "", "COMPANY/COMPUTER/CONFIG/SEQ")
	to := fl.String("to", "", "directory to restore into (created)")
	fl.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "list":
		err = list(*from, os.Stdout)
	case "catalog":
		err = listCatalog(*from, os.Stdout)
	case "restore":
		if *version == "" || *to == "" {
			usage()
		}
		var r *recoverer
		if r, err = newRecoverer(*from, *keyFile); err == nil {
			var n int
			n, err = r.restore(*version, *to)
			fmt.Printf("%d objects restored into %s\n", n, *to)
		}
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vault-tape-recover:", err)
		os.Exit(1)
	}
}

// list prints every version whose version.json is in dir, with the tape
// files it needs.
func list(dir string, w io.Writer) error {
	root := filepath.Join(dir, format.Root)
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() != "version.json" {
			return nil
		}
		vi, err := readInfo(p)
		if err != nil {
			return err
		}
		printVersion(w, "", vi)
		return nil
	})
}

// printVersion prints one line of a version and the tape files it needs.
func printVersion(w io.Writer, indent string, vi format.VersionInfo) {
	var files []string
	for _, f := range vi.Files {
		files = append(files, f.String())
	}
	fmt.Fprintf(w, "%s%s/%s/%s/%d\tstarted %s\tneeds %s\n", indent, vi.Company, vi.Computer, vi.Config, vi.Seq,
		vi.Started.Format(time.RFC3339), strings.Join(files, " "))
}

// listCatalog prints what the catalog files extracted into dir say: each
// data file's chunks, and every version ending in it with the tape files
// it needs.
func listCatalog(dir string, w io.Writer) error {
	root := filepath.Join(dir, format.CatalogRoot)
	found := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() != "file.json" {
			return nil
		}
		b, err := readBounded(p, format.MaxCatalogJSON)
		if err != nil {
			return err
		}
		var f format.CatalogFile
		if err := json.Unmarshal(b, &f); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		found++
		barcode := filepath.Base(filepath.Dir(filepath.Dir(p)))
		chunks := 0
		for _, c := range f.Chunks {
			chunks += c.Count
		}
		fmt.Fprintf(w, "%s:%d\tmedia set %s\t%d bytes\t%d chunks\n", barcode, f.File, f.MediaSet, f.Bytes, chunks)
		for _, v := range f.Versions {
			printVersion(w, "  ", v.VersionInfo)
		}
		return nil
	})
	if err == nil && found == 0 {
		err = fmt.Errorf("no catalog file in %s: extract the cartridge's last tape file there", dir)
	}
	return err
}

func readInfo(p string) (format.VersionInfo, error) {
	var vi format.VersionInfo
	b, err := readBounded(p, format.MaxJSON)
	if err != nil {
		return vi, err
	}
	if err := format.DecodeJSON(b, &vi); err != nil {
		return vi, fmt.Errorf("%s: %w", p, err)
	}
	return vi, nil
}

func readBounded(p string, max int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: over the %d-byte limit", p, max)
	}
	return b, nil
}

type recoverer struct {
	dir     string
	company string
	set     *keys.Set
	hasher  *keys.Hasher
	warned  bool
}

func newRecoverer(dir, keyFile string) (*recoverer, error) {
	r := &recoverer{dir: dir}
	if keyFile == "" {
		return r, nil
	}
	b, err := readBounded(keyFile, 4096)
	if err != nil {
		return nil, fmt.Errorf("read the key: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) < 3 || f[0] != keyPrefix || len(f[2]) != 64 {
		return nil, fmt.Errorf("%s is not a company key: want the line %q that vaultctl company export-key prints", keyFile, keyPrefix+" COMPANY HEX")
	}
	var secret [32]byte
	if _, err := hex.Decode(secret[:], []byte(f[2])); err != nil {
		return nil, fmt.Errorf("company key: %w", err)
	}
	set := keys.Derive(secret)
	r.company, r.set, r.hasher = f[1], &set, keys.NewHasher(set.ChunkID)
	return r, nil
}

// chunk reads one chunk's plaintext and checks it against its id.
func (r *recoverer) chunk(company string, id [32]byte) ([]byte, error) {
	maxEntry := int64(pack.EntryHeaderSize + pack.MaxPlain + pack.Overhead + pack.MaxPlain/64 + 1024)
	sealed := filepath.Join(r.dir, filepath.FromSlash(format.ChunkMember(company, id, false)))
	b, err := readBounded(sealed, maxEntry)
	plain := false
	if errors.Is(err, fs.ErrNotExist) {
		b, err = readBounded(filepath.Join(r.dir, filepath.FromSlash(format.ChunkMember(company, id, true))), maxEntry)
		plain = true
	}
	if err != nil {
		return nil, fmt.Errorf("chunk %x: %w (extract the tape files version.json names)", id[:8], err)
	}
	h, err := pack.ParseEntryHeader(b)
	if err != nil {
		return nil, fmt.Errorf("chunk %x: %w", id[:8], err)
	}
	if h.ID != id {
		return nil, fmt.Errorf("chunk %x: the file holds chunk %x", id[:8], h.ID[:8])
	}
	payload := b[pack.EntryHeaderSize:]
	if !plain {
		if r.set == nil {
			return nil, fmt.Errorf("chunk %x is encrypted: give the company's key with -key", id[:8])
		}
		if payload, err = pack.OpenBody(nil, pack.NewSealer(r.set.Pack), &h, payload); err != nil {
			return nil, fmt.Errorf("chunk %x: %w (is -key the key of company %s?)", id[:8], err, company)
		}
	}
	p, err := wire.Decompress(nil, h.Flags, payload, h.PlainLen)
	if err != nil {
		return nil, fmt.Errorf("chunk %x: %w", id[:8], err)
	}
	if r.hasher == nil && !r.warned {
		r.warned = true
		fmt.Fprintln(os.Stderr, "vault-tape-recover: no key given: chunks are not checked against their ids (give -key to check them)")
	}
	if r.hasher != nil && r.hasher.Sum(p) != id {
		return nil, fmt.Errorf("chunk %x: content does not match its id (damaged)", id[:8])
	}
	return p, nil
}

func (r *recoverer) restore(version, to string) (int, error) {
	parts := strings.Split(version, "/")
	if len(parts) != 4 {
		return 0, fmt.Errorf("version %q: give COMPANY/COMPUTER/CONFIG/SEQ (the list command prints them)", version)
	}
	var seq uint64
	if _, err := fmt.Sscanf(parts[3], "%d", &seq); err != nil {
		return 0, fmt.Errorf("version %q: sequence: %w", version, err)
	}
	company := parts[0]
	if r.company != "" && r.company != company {
		return 0, fmt.Errorf("the key is company %s's, the version company %s's", r.company, company)
	}
	vi, err := readInfo(filepath.Join(r.dir, filepath.FromSlash(format.VersionDir(company, parts[1], parts[2], seq)), "version.json"))
	if err != nil {
		return 0, fmt.Errorf("version %s: %w", version, err)
	}
	var mid [32]byte
	if _, err := hex.Decode(mid[:], []byte(vi.ManifestID)); err != nil || len(vi.ManifestID) != 64 {
		return 0, fmt.Errorf("version %s: manifest id %q", version, vi.ManifestID)
	}
	mb, err := r.chunk(company, mid)
	if err != nil {
		return 0, fmt.Errorf("manifest: %w", err)
	}
	var m wire.Manifest
	if err := tree.Unmarshal(mb, &m); err != nil || m.Magic != wire.ManifestMagic {
		return 0, fmt.Errorf("manifest %x is not a vaultnode manifest (%v)", mid[:8], err)
	}
	pr, pw := io.Pipe()
	go func() {
		for _, ref := range m.Listing {
			b, err := r.chunk(company, ref.ID)
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := pw.Write(b); err != nil {
				return
			}
		}
		pw.Close()
	}()
	defer pr.Close()
	rd, err := tree.NewListingReader(pr, m.Listing)
	if err != nil {
		return 0, fmt.Errorf("listing: %w", err)
	}
	if err := os.MkdirAll(to, 0o755); err != nil {
		return 0, err
	}
	type dirTime struct {
		path string
		t    time.Time
		mode os.FileMode
	}
	var dirs []dirTime
	links := map[string]bool{}
	n := 0
	for {
		node, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, fmt.Errorf("listing: %w", err)
		}
		rel := string(node.Path)
		if rel == "." {
			rel = ""
		}
		if strings.HasPrefix(rel, "/") || slicesContains(strings.Split(rel, "/"), "..") {
			return n, fmt.Errorf("listing names an unsafe path %q", rel)
		}
		// Never write through a symbolic link this restore made (a
		// listing naming "a" a link and then "a/x").
		for dir := path.Dir(rel); dir != "." && dir != "/" && dir != ""; dir = path.Dir(dir) {
			if links[dir] {
				return n, fmt.Errorf("listing names %q below the symbolic link %q: refused", rel, dir)
			}
		}
		dst := filepath.Join(to, filepath.FromSlash(rel))
		mtime := time.Unix(node.Mtime.Sec, node.Mtime.Nsec)
		switch node.Type {
		case tree.TypeDir:
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return n, err
			}
			dirs = append(dirs, dirTime{dst, mtime, os.FileMode(node.Mode & 0o777)})
		case tree.TypeFile:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return n, err
			}
			if lt := string(node.LinkTo); len(lt) > 0 && (strings.HasPrefix(lt, "/") || slicesContains(strings.Split(lt, "/"), "..")) {
				return n, fmt.Errorf("listing links %q to an unsafe path %q", rel, lt)
			}
			if len(node.LinkTo) > 0 {
				if err := os.Link(filepath.Join(to, filepath.FromSlash(string(node.LinkTo))), dst); err != nil {
					return n, err
				}
				break
			}
			if err := r.writeFile(company, node, dst); err != nil {
				return n, fmt.Errorf("%s: %w", rel, err)
			}
			os.Chtimes(dst, mtime, mtime)
		case tree.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return n, err
			}
			if err := os.Symlink(string(node.Target), dst); err != nil {
				return n, err
			}
			links[rel] = true
		default:
			fmt.Fprintf(os.Stderr, "skipping %s (%s)\n", rel, node.Type)
			continue
		}
		n++
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i].path) > len(dirs[j].path) })
	for _, d := range dirs { // deepest first: modes and times after the content
		os.Chmod(d.path, d.mode)
		os.Chtimes(d.path, d.t, d.t)
	}
	return n, nil
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// writeFile writes a file's chunks (at its extents when sparse).
func (r *recoverer) writeFile(company string, node *tree.Node, dst string) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, os.FileMode(node.Mode&0o777)|0o200)
	if err != nil {
		return err
	}
	defer f.Close()
	var data bytes.Buffer
	ext := node.Extents
	for _, c := range node.Chunks {
		b, err := r.chunk(company, c.ID)
		if err != nil {
			return err
		}
		if !node.Sparse {
			if _, err := f.Write(b); err != nil {
				return err
			}
			continue
		}
		data.Write(b)
		for len(ext) > 0 && int64(data.Len()) >= ext[0].Len {
			if _, err := f.WriteAt(data.Next(int(ext[0].Len)), ext[0].Off); err != nil {
				return err
			}
			ext = ext[1:]
		}
	}
	if err := f.Truncate(node.Size); err != nil {
		return err
	}
	if err := f.Chmod(os.FileMode(node.Mode & 0o7777)); err != nil {
		return err
	}
	return f.Close()
}
