package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Existing says what to do with a file that already exists at the target.
type Existing string

const (
	Skip      Existing = "skip"
	Overwrite Existing = "overwrite"
	KeepBoth  Existing = "keep-both"
)

// Options of Run.
type Options struct {
	Source   Source
	ChunkKey [32]byte
	// GearKey is the chunker's key: with it, -existing overwrite finds
	// content that moved within a file (inplace.go). Optional.
	GearKey  [32]byte
	Manifest wire.Manifest
	// Journal are continuous-mode records on top of Manifest to apply.
	Journal []wire.Journal
	// Prefix restricts the restore to one path of the version (and what is
	// below it); empty restores everything.
	Prefix []byte
	// Target is the directory the version's paths are recreated under; "/"
	// puts everything back in its original place.
	Target   string
	DryRun   bool
	Existing Existing
	Meta     meta.Options
	Log      *zap.Logger
	Out      io.Writer // dry-run listing
	Progress func(s *Stats)
	// Workers is how many files are restored at once (0: DefaultWorkers).
	Workers int
	// Devices recreates character and block device nodes, and SetID keeps
	// set-user-ID and set-group-ID bits and file capabilities
	// (security.capability), when running as root. Otherwise device nodes
	// are skipped and those bits and capabilities stripped, each with a
	// note: a listing is not trusted to hand out privileges.
	Devices bool
	SetID   bool
}

// Stats count a restore.
type Stats struct {
	Start   time.Time
	Files   int64
	Bytes   int64
	Skipped int64
	Failed  int64
	Total   int64 // bytes to restore, known as the listing is read
	// Copied counts chunks written from a place restored earlier in the
	// run instead of downloaded again (repeats.go).
	Copied int64
	// Kept counts the files found at the target with the version's
	// content (-existing overwrite), whose metadata alone was set;
	// Reused the bytes copied from files found there into the files
	// replacing them, instead of downloaded (inplace.go).
	Kept, Reused int64
}

// Result is what a restore did.
type Result struct {
	Stats    Stats
	Problems []string // every object that could not be restored or was refused, and why
	Notes    []string // what was left out on purpose (device nodes, set-id bits)
	// NoSpace: at least one of the problems was the target's filesystem
	// full or a disk quota reached (ENOSPC, EDQUOT).
	NoSpace bool
}

type dirEntry struct {
	path []byte
	fd   int
	node *tree.Node // nil for a directory made only to reach a prefix
	// wg counts the files and subdirectories still being restored in it;
	// the directory's fd stays open and its metadata waits until they are.
	wg     sync.WaitGroup
	parent *dirEntry
	// created: this restore made the directory (mode 0700: nobody else may
	// add names to it or change it until its metadata is applied), so a
	// name not yet restored in it does not exist. bare: besides, a file
	// created in it starts with no xattrs, no settable flags and the
	// restore's own owner and group (meta.BareEntries), so its metadata is
	// set without reading those first.
	created, bare bool
	anonDir
}

type restorer struct {
	o         Options
	ctx       context.Context
	stats     *Stats
	mu        sync.Mutex
	probs     []string
	noSpace   bool // a problem was the target's filesystem full (problem)
	stack     []*dirEntry
	jobs      chan *job
	batch     []fileJob // small files waiting to fill a request
	batchSize int64
	others    []fileJob // symlinks, FIFOs, devices waiting for a worker
	notes     []string
	links     []link
	linkDirs  map[string]bool // directories that get hard links at the end
	dirs      map[string]*tree.Node
	// placed holds the hard-linked regular files queued so far (by listing
	// path), restored those written completely: a hard link may point
	// only at one of them.
	placed     map[string]struct{}
	restored   map[string]restoredFile
	privileged bool // running as root: devices and set-id bits may be asked for
	// srcs are the first places of the chunks queued so far (repeats.go),
	// used by the walker only; root is the target's descriptor.
	srcs map[[32]byte]srcRef
	root int
	mem  memChunks // small chunks' content, for their copies (repeats.go)
	// zeros knows the chunks of zeros, allocated instead of written
	// (zeros.go).
	zeros zeroChunks
	// linkHow is how unnamed files get their names (anon.go).
	linkHow int32
	// euid and egid own the files this restore creates (inplace.go).
	euid, egid uint32
	// gear cuts files found at the target as backups cut them; nil
	// without Options.GearKey. cuts holds the chunker's buffers
	// (inplace.go).
	gear *chunker.Gear
	cuts sync.Pool
}

type link struct {
	node *tree.Node
}

// restoredFile is a regular file written in this run that hard links may
// point at: where it is beneath the target and which inode it is.
type restoredFile struct {
	rel      string // its name beneath the target (keep-both may rename it)
	dev, ino uint64
	node     *tree.Node
	named    bool // kept with several names there (unshareKept)
}

// Test hooks: geteuid decides whether the restore runs as root;
// testHookDir runs after each directory is created and entered, and
// testHookBeforeRename before a file written takes its name (fd is the
// file written).
var (
	geteuid              = os.Geteuid
	testHookDir          func(path []byte)
	testHookBeforeRename func(path []byte, fd int)
	// testTempNames writes every file under a temporary name, as where
	// unnamed files cannot be named.
	testTempNames bool
)

func (r *restorer) note(format string, args ...any) {
	r.mu.Lock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// problem records an object that could not be restored. An error among
// args that is the target running out of space (ENOSPC, EDQUOT) is noted
// for the summary (Result.NoSpace), so it can say what to do.
func (r *restorer) problem(format string, args ...any) {
	atomic.AddInt64(&r.stats.Failed, 1)
	full := false
	for _, a := range args {
		if err, ok := a.(error); ok && (errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)) {
			full = true
		}
	}
	r.mu.Lock()
	r.probs = append(r.probs, fmt.Sprintf(format, args...))
	r.noSpace = r.noSpace || full
	r.mu.Unlock()
}

// DefaultWorkers is how many files a restore writes at once unless told:
// two per CPU the process may use, 4 to 16. A worker waits for the vault's
// answers, for file creation and for the disk in turn, so two a core keep
// every core busy; more only add buffers. Each holds a download's frame
// and decompressed chunk (up to 4 MiB each), and on machines whose first
// touch of a page is dear that memory costs CPU: restoring the benchmark's
// current tree with eight workers on two cores took 14 % more of the
// agent's CPU and 12 % more wall time than with four (docs/performance.md,
// item 40), while many small files gained nothing from eight.
func DefaultWorkers() int {
	return min(max(2*runtime.GOMAXPROCS(0), 4), 16)
}

// readerKeeper is a Source that keeps its download readers between
// requests (*client.Client): a restore tells it how many downloads it runs
// at once, so that each reuses a reader whose buffer grew to a chunk's
// size once.
type readerKeeper interface{ KeepFrameReaders(n int) }

// Run restores the version described by o.Manifest.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers()
	}
	if k, ok := o.Source.(readerKeeper); ok {
		k.KeepFrameReaders(o.Workers + 1) // the workers' downloads and the listing's
	}
	if o.Existing == "" {
		o.Existing = Skip
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	rd, stop, err := OpenVersion(ctx, o.Source, o.ChunkKey, o.Manifest, o.Journal)
	if err != nil {
		return nil, fmt.Errorf("read listing of %s@%d: %w", o.Manifest.Config, o.Manifest.Seq, err)
	}
	defer stop()
	return run(ctx, o, rd)
}

// run restores the nodes rd yields.
func run(ctx context.Context, o Options, rd Nodes) (*Result, error) {
	r := &restorer{o: o, ctx: ctx, stats: &Stats{Start: time.Now()}, jobs: make(chan *job, openJobSlack),
		dirs: map[string]*tree.Node{}, linkDirs: map[string]bool{}, placed: map[string]struct{}{}, restored: map[string]restoredFile{}, srcs: map[[32]byte]srcRef{},
		zeros:      zeroChunks{key: o.ChunkKey},
		privileged: geteuid() == 0, euid: uint32(unix.Geteuid()), egid: uint32(unix.Getegid())}
	if o.GearKey != ([32]byte{}) {
		g, err := chunker.NewGear(o.GearKey)
		if err != nil {
			return nil, err
		}
		r.gear = g
	}
	if !o.DryRun {
		if err := os.MkdirAll(o.Target, 0o700); err != nil {
			return nil, fmt.Errorf("create target: %w", err)
		}
		fd, err := unix.Open(o.Target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open target %s: %w", o.Target, err)
		}
		r.stack = []*dirEntry{{path: nil, fd: fd}}
		r.root = fd
		if !probeOpenat2(fd) {
			o.Log.Info("openat2 is not available (Linux before 5.6, or filtered): hard links are resolved component by component with O_NOFOLLOW")
		}
		if r.linkHow = probeLink(fd); testTempNames {
			r.linkHow = linkNone
		} else if r.linkHow == linkNone {
			o.Log.Info("files are written under temporary names and renamed: unnamed files (O_TMPFILE) cannot be named here (no CAP_DAC_READ_SEARCH and no /proc)")
		}
	}
	if o.Progress != nil {
		done := make(chan struct{})
		defer close(done)
		go func() {
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					o.Progress(r.stats)
				}
			}
		}()
	}
	var wg sync.WaitGroup
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &fileWriter{r: r, h: keys.NewHasher(o.ChunkKey)}
			for j := range r.jobs {
				w.run(j)
			}
		}()
	}
	walkErr := r.walk(rd)
	r.flushBatch() // and the other objects waiting
	close(r.jobs)
	wg.Wait()
	if !o.DryRun {
		for len(r.stack) > 1 {
			r.pop()
		}
		r.stack[0].wg.Wait()
		r.makeLinks()
		unix.Close(r.stack[0].fd)
	}
	if o.Progress != nil {
		o.Progress(r.stats)
	}
	res := &Result{Stats: *r.stats, Problems: r.probs, Notes: r.notes, NoSpace: r.noSpace}
	if walkErr != nil {
		return res, walkErr
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	return res, nil
}

func under(p, prefix []byte) bool {
	if len(prefix) == 0 || string(prefix) == "." {
		return true
	}
	return bytes.Equal(p, prefix) || (bytes.HasPrefix(p, prefix) && p[len(prefix)] == '/')
}

func (r *restorer) walk(rd Nodes) error {
	found := false
	for {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		n, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read listing: %w", err)
		}
		if !under(n.Path, r.o.Prefix) {
			if found && tree.Compare(n.Path, r.o.Prefix) > 0 {
				break // tree order: nothing under the prefix comes later
			}
			continue
		}
		found = true
		if n.Type == tree.TypeDeleted {
			continue
		}
		if err := r.check(n); err != nil {
			r.problem("%q: NOT RESTORED: %v", n.Path, err)
			continue
		}
		if n = r.policy(n); n == nil {
			continue
		}
		if n.Type == tree.TypeFile && n.LinkTo == nil && n.Nlink > 1 {
			r.placed[string(n.Path)] = struct{}{}
		}
		if n.Status != tree.StatusOK {
			r.problem("%s: not restored: it was not backed up completely (%s)", n.Path, n.Err)
			if n.Type != tree.TypeDir {
				continue
			}
		}
		if n.Type == tree.TypeFile {
			atomic.AddInt64(&r.stats.Total, n.Size)
		}
		if r.o.DryRun {
			fmt.Fprintf(r.o.Out, "%-8s %12d  %s\n", n.Type, n.Size, n.Path)
			if n.Type == tree.TypeFile {
				atomic.AddInt64(&r.stats.Files, 1)
				atomic.AddInt64(&r.stats.Bytes, n.Size)
			}
			continue
		}
		if err := r.place(n); err != nil {
			r.problem("%s: %v", n.Path, err)
		}
	}
	if !found && len(r.o.Prefix) > 0 {
		return fmt.Errorf("%s is not in %s@%d: see `vault-agent ls`", r.o.Prefix, r.o.Manifest.Config, r.o.Manifest.Seq)
	}
	return nil
}

func splitPath(p []byte) (dir, name []byte) {
	i := bytes.LastIndexByte(p, '/')
	if i < 0 {
		return nil, p
	}
	return p[:i], p[i+1:]
}

// enter makes the directory stack match dir, creating missing directories.
func (r *restorer) enter(dir []byte) error {
	for len(r.stack) > 1 && !under(dir, r.stack[len(r.stack)-1].path) {
		r.pop()
	}
	top := r.stack[len(r.stack)-1]
	if bytes.Equal(top.path, dir) {
		return nil
	}
	rest := dir
	if len(top.path) > 0 {
		rest = dir[len(top.path)+1:]
	}
	for _, c := range bytes.Split(rest, []byte{'/'}) {
		top = r.stack[len(r.stack)-1]
		err := unix.Mkdirat(top.fd, string(c), 0o700)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create directory %s: %w", c, err)
		}
		if err := r.push(top, c, nil, err == nil); err != nil {
			return err
		}
	}
	return nil
}

// push enters the directory name of parent; created says this restore has
// just made it.
func (r *restorer) push(parent *dirEntry, name []byte, n *tree.Node, created bool) error {
	fd, err := unix.Openat(parent.fd, string(name), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", name, err)
	}
	bare := created && meta.BareEntries(fd)
	p := bytes.Clone(name)
	if len(parent.path) > 0 {
		p = append(append(bytes.Clone(parent.path), '/'), name...)
	}
	parent.wg.Add(1) // the parent's metadata waits for this directory's
	r.stack = append(r.stack, &dirEntry{path: p, fd: fd, node: n, parent: parent, created: created, bare: bare})
	return nil
}

// pop leaves the innermost directory. Its metadata is applied once its
// files and subdirectories are done (after its contents, so times and
// read-only modes hold), in the background: the walk goes on queueing the
// next directories' files meanwhile, so the workers never wait for it.
func (r *restorer) pop() {
	d := r.stack[len(r.stack)-1]
	r.stack = r.stack[:len(r.stack)-1]
	opts := r.o.Meta
	// Hard links into d are made at the end: an immutable directory gets
	// its flags after them (makeLinks applies its metadata again).
	opts.SkipFlags = r.linkDirs[string(d.path)]
	go func() {
		d.wg.Wait()
		if d.node != nil {
			if err := meta.ApplyFD(d.fd, d.node, opts); err != nil {
				r.problem("%s: metadata: %v", d.path, err)
			}
		}
		unix.Close(d.fd)
		d.parent.wg.Done()
	}()
}

func (r *restorer) place(n *tree.Node) error {
	dir, name := splitPath(n.Path)
	if string(n.Path) == "." {
		dir, name = nil, nil
	}
	if err := r.enter(dir); err != nil {
		return err
	}
	parent := r.stack[len(r.stack)-1]
	if name == nil { // the root of the filesystem: restore into the target itself
		return nil
	}
	switch n.Type {
	case tree.TypeDir:
		// A mount point is recreated as a directory; its contents were
		// another filesystem, not part of the version.
		created := unix.Mkdirat(parent.fd, string(name), 0o700) == nil
		if !created {
			// -existing overwrite: a non-directory there is replaced.
			opts := r.o.Meta
			opts.Replace = r.o.Existing == Overwrite
			if err := meta.Create(parent.fd, string(name), n, opts); err != nil {
				return err
			}
		}
		r.dirs[string(n.Path)] = n
		if err := r.push(parent, name, n, created); err != nil {
			return err
		}
		if testHookDir != nil {
			testHookDir(n.Path)
		}
		return nil
	case tree.TypeFile:
		if n.LinkTo != nil {
			r.links = append(r.links, link{node: n})
			r.linkDirs[string(parent.path)] = true
			return nil
		}
		if parent.created { // nothing to look up: the file is created with O_EXCL
			r.queueFile(fileJob{dir: parent, name: string(name), node: n, fresh: true})
			return nil
		}
		final, fresh, skip, mode, err := r.targetName(parent.fd, string(name))
		if err != nil || skip {
			return err
		}
		// A regular file at the name, to be overwritten: read first, and
		// kept or copied from where its content is the version's
		// (inplace.go).
		existing := !fresh && r.o.Existing == Overwrite && mode&unix.S_IFMT == unix.S_IFREG
		r.queueFile(fileJob{dir: parent, name: final, node: n, fresh: fresh, existing: existing})
		return nil
	case tree.TypeSocket:
		return nil // recorded, not recreated
	default:
		if parent.created {
			// Nothing has the name: the workers make it, a batch at a
			// time, beside the files (files.go).
			r.queueOther(fileJob{dir: parent, name: string(name), node: n})
			return nil
		}
		final, _, skip, _, err := r.targetName(parent.fd, string(name))
		if err != nil || skip {
			return err
		}
		return r.makeOther(parent, final, n)
	}
}

// makeOther makes a symlink, FIFO or device node with its metadata.
func (r *restorer) makeOther(parent *dirEntry, name string, n *tree.Node) error {
	opts := r.o.Meta
	opts.Replace = r.o.Existing == Overwrite && !parent.created
	if err := meta.Create(parent.fd, name, n, opts); err != nil {
		return err
	}
	opts = r.o.Meta
	opts.New = parent.bare // made now, in a directory that gives it nothing
	if err := meta.Apply(parent.fd, name, n, opts); err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	return nil
}

// targetName applies the policy for an existing object: it returns the
// name to restore to, whether nothing had that name (fresh), whether to
// skip the object, and the mode of what has the name (0 when nothing).
func (r *restorer) targetName(dirfd int, name string) (final string, fresh, skip bool, mode uint32, err error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
		return name, true, false, 0, nil
	}
	switch r.o.Existing {
	case Overwrite:
		return name, false, false, st.Mode, nil
	case KeepBoth:
		for i := 1; ; i++ {
			alt := name + ".restored"
			if i > 1 {
				alt += "-" + strconv.Itoa(i)
			}
			if err := unix.Fstatat(dirfd, alt, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
				return alt, true, false, 0, nil
			}
		}
	}
	atomic.AddInt64(&r.stats.Skipped, 1)
	return name, false, true, st.Mode, nil
}

// policy applies what a listing may not decide alone: device nodes are
// recreated, set-id bits and file capabilities kept, only when running as
// root and asked to. It returns the node to restore (a stripped copy when
// needed), or nil to skip it.
func (r *restorer) policy(n *tree.Node) *tree.Node {
	switch n.Type {
	case tree.TypeChar, tree.TypeBlock:
		if !r.privileged || !r.o.Devices {
			atomic.AddInt64(&r.stats.Skipped, 1)
			r.note("%q: %s not recreated (device nodes are restored only as root with -devices)", n.Path, n.Type)
			return nil
		}
	case tree.TypeDir, tree.TypeSymlink, tree.TypeSocket, tree.TypeDeleted:
		return n
	}
	if r.privileged && r.o.SetID {
		return n
	}
	setid := n.Mode&(unix.S_ISUID|unix.S_ISGID) != 0
	var xs []tree.Xattr
	for _, x := range n.Xattrs {
		if x.Name == "security.capability" {
			setid = true
			continue
		}
		xs = append(xs, x)
	}
	if !setid {
		return n
	}
	c := *n
	c.Mode &^= unix.S_ISUID | unix.S_ISGID
	c.Xattrs = xs
	r.note("%q: set-user-ID, set-group-ID bits and file capabilities stripped (kept only as root with -setid)", n.Path)
	return &c
}

// makeLinks creates hard links once every file is written. Both ends are
// resolved beneath the target without traversing symlinks, and the link
// is made to the very inode written earlier in this run.
func (r *restorer) makeLinks() {
	root := r.stack[0].fd
	opts := r.o.Meta
	opts.Replace = r.o.Existing == Overwrite
	for _, l := range r.links {
		if err := r.makeLink(root, l.node, opts); err != nil {
			r.problem("%q: NOT RESTORED: %v", l.node.Path, err)
		}
	}
	r.unshareKept(root, opts)
	// The sources' inode flags wait for their last link (an immutable
	// file cannot be linked).
	for _, f := range r.restored {
		if f.node.Flags&meta.SettableFlags == 0 {
			continue
		}
		if err := r.withRestored(root, f, func(fd int) error { return meta.SetFlagsFD(fd, f.node.Flags) }); err != nil {
			r.problem("%q: metadata: %v", f.node.Path, err)
		}
	}
	// Linking changed the directories' times, and their flags waited for
	// the links: set their metadata again, links made or not.
	for d := range r.linkDirs {
		n := r.dirs[d]
		if n == nil {
			continue
		}
		fd, err := openBeneath(root, d, unix.O_RDONLY|unix.O_DIRECTORY)
		if err == nil {
			err = meta.ApplyFD(fd, n, r.o.Meta)
			unix.Close(fd)
		}
		if err != nil {
			r.problem("%s: metadata: %v", d, err)
		}
	}
}

// withRestored runs fn on an O_PATH descriptor of f, checked to be the
// inode written.
func (r *restorer) withRestored(root int, f restoredFile, fn func(fd int) error) error {
	fd, _, err := openRestored(root, f, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return fn(fd)
}

// openRestored opens f beneath root with flags and returns it with its
// status, checked to be the inode written.
func openRestored(root int, f restoredFile, flags int) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := openBeneath(root, f.rel, flags)
	if err != nil {
		return -1, st, err
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, st, fmt.Errorf("stat %q: %w", f.rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Dev != f.dev || st.Ino != f.ino {
		unix.Close(fd)
		return -1, st, fmt.Errorf("%w: %q is no longer the file restored there", ErrRefused, f.rel)
	}
	return fd, st, nil
}

// unshareKept checks each file kept with several names (keepable), now
// that the links are made: a name there that is none of the version's
// names of the file (a hard link elsewhere beneath or outside the target,
// which someone may have made to keep reaching it) would keep reaching the
// restored file. Such a file is replaced by a copy of itself, and the
// version's names are linked to the copy; the other names keep the old
// inode.
func (r *restorer) unshareKept(root int, opts meta.Options) {
	var names map[string][]*tree.Node
	for p, f := range r.restored {
		if !f.named {
			continue
		}
		if names == nil {
			names = map[string][]*tree.Node{}
			for _, l := range r.links {
				names[string(l.node.LinkTo)] = append(names[string(l.node.LinkTo)], l.node)
			}
		}
		have := uint64(1) // the version's names that are the file
		for _, l := range names[p] {
			if r.withRestored(root, restoredFile{rel: string(l.Path), dev: f.dev, ino: f.ino}, func(int) error { return nil }) == nil {
				have++
			}
		}
		fd, st, err := openRestored(root, f, unix.O_PATH)
		if err != nil {
			continue // gone meanwhile: makeLinks' flags report it
		}
		unix.Close(fd)
		nlink := st.Nlink
		if nlink <= have {
			continue
		}
		nf, err := r.unshare(root, f)
		if err != nil {
			r.problem("%q: some of its names there are not the version's, and no copy could be made to restore it alone: %v", p, err)
			continue
		}
		r.mu.Lock()
		r.restored[p] = nf
		r.mu.Unlock()
		r.note("%q: %d of its names there are not the version's (hard links elsewhere): restored as a file of its own, those names left to the old one", p, nlink-have)
		for _, l := range names[p] {
			if err := r.makeLink(root, l, opts); err != nil {
				r.problem("%q: NOT RESTORED: %v", l.Path, err)
			}
		}
	}
}

// unshare replaces the file f by a copy of itself (its data ranges copied
// in the kernel, its holes left as holes, its metadata set from its node)
// put at its name in one rename, and returns the copy.
func (r *restorer) unshare(root int, f restoredFile) (restoredFile, error) {
	dir, name := splitPath([]byte(f.rel))
	dfd, err := openBeneath(root, string(dir), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return f, err
	}
	defer unix.Close(dfd)
	sfd, st, err := openRestored(root, f, unix.O_RDONLY|unix.O_NONBLOCK) // a FIFO put there meanwhile does not block
	if err != nil {
		return f, err
	}
	src := os.NewFile(uintptr(sfd), f.rel)
	defer src.Close()
	var copied unix.Stat_t
	tmp, err := meta.MakeTemp(dfd, string(name), func(tmp string) error {
		fd, err := meta.CreateFDMode(dfd, tmp, 0o600, meta.Options{})
		if err == nil {
			err = copyData(fd, src, st.Size)
			if err == nil {
				opts := r.o.Meta
				opts.SkipFlags = true // set after the links (makeLinks)
				err = meta.ApplyFD(fd, f.node, opts)
			}
			if err == nil {
				err = unix.Fstat(fd, &copied)
			}
			if cerr := unix.Close(fd); err == nil {
				err = cerr
			}
			if err != nil {
				unix.Unlinkat(dfd, tmp, 0)
			}
		}
		return err
	})
	if err != nil {
		return f, err
	}
	if err := unix.Renameat(dfd, tmp, dfd, string(name)); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return f, err
	}
	return restoredFile{rel: f.rel, dev: copied.Dev, ino: copied.Ino, node: f.node}, nil
}

// copyData copies the size bytes of src into dst, its data extents only
// (meta.DataExtents), so holes stay holes; copyRange copies in the kernel,
// or shares the blocks where the filesystem can.
func copyData(dst int, src *os.File, size int64) error {
	ext, _, err := meta.DataExtents(src, size)
	if err != nil {
		return err
	}
	for _, e := range ext {
		if err := copyRange(int(src.Fd()), e.Off, dst, e.Off, e.Len); err != nil {
			return err
		}
	}
	return unix.Ftruncate(dst, size)
}

func (r *restorer) makeLink(root int, n *tree.Node, opts meta.Options) error {
	r.mu.Lock()
	src, ok := r.restored[string(n.LinkTo)]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: hard link to %q, which was not restored in this run", ErrRefused, n.LinkTo)
	}
	dir, name := splitPath(n.Path)
	dfd, err := openBeneath(root, string(dir), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	final, _, skip, _, err := r.targetName(dfd, string(name))
	if err != nil || skip {
		return err
	}
	err = r.withRestored(root, src, func(fd int) error { return meta.LinkFD(fd, dfd, final, opts) })
	if err != nil {
		return err
	}
	atomic.AddInt64(&r.stats.Files, 1)
	return nil
}

func truncName(s string) string {
	if len(s) > 200 {
		return s[:200]
	}
	return s
}
