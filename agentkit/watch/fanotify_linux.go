package watch

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

const fanotifyMask = unix.FAN_CREATE | unix.FAN_CLOSE_WRITE | unix.FAN_MOVED_FROM | unix.FAN_MOVED_TO |
	unix.FAN_DELETE | unix.FAN_MODIFY | unix.FAN_ATTRIB | unix.FAN_ONDIR

// maxHandleCache bounds the directory-handle to path cache.
const maxHandleCache = 16384

// pseudo filesystems a root may contain that cannot (and need not) be marked.
var pseudoFS = map[string]bool{
	"proc": true, "sysfs": true, "cgroup": true, "cgroup2": true, "devpts": true, "debugfs": true,
	"tracefs": true, "securityfs": true, "pstore": true, "bpf": true, "mqueue": true, "hugetlbfs": true,
	"configfs": true, "fusectl": true, "autofs": true, "binfmt_misc": true, "efivarfs": true, "nsfs": true,
	"devtmpfs": true, "rpc_pipefs": true,
}

type fanotify struct {
	log   *zap.Logger
	f     *os.File
	roots []rootMap
	// mountFDs maps a filesystem id to an open directory on it, for
	// open_by_handle_at.
	mountFDs map[[8]byte]int
	lim      Limits

	nseen atomic.Uint64

	cacheMu sync.Mutex
	cache   map[string]string // fsid+handle -> directory path
}

// rootMap pairs a root as given (after Clean) with its real path: the kernel
// reports real paths, the batches carry given ones.
type rootMap struct{ given, real string }

func newFanotify(roots []string, log *zap.Logger) (*fanotify, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|unix.FAN_REPORT_DFID_NAME,
		unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init with directory and name reporting (needs root and kernel 5.9 or later): %w", err)
	}
	fa := &fanotify{
		log:      log,
		f:        os.NewFile(uintptr(fd), "fanotify"),
		mountFDs: map[[8]byte]int{},
		cache:    map[string]string{},
		lim:      Limits{Backend: BackendFanotify, QueueLimit: readProcInt("/proc/sys/fs/fanotify/max_queued_events")},
	}
	fail := func(err error) (*fanotify, error) {
		fa.close()
		return nil, err
	}
	for _, r := range roots {
		real, err := filepath.EvalSymlinks(r)
		if err != nil {
			return fail(fmt.Errorf("resolve root %s: %w", r, err))
		}
		fa.roots = append(fa.roots, rootMap{given: r, real: real})
	}
	points, err := markPoints(fa.roots)
	if err != nil {
		return fail(err)
	}
	var degraded []string
	for _, p := range points {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			return fail(fmt.Errorf("statfs %s: %w", p, err))
		}
		key := fsidKey(st.Fsid.Val[0], st.Fsid.Val[1])
		if _, done := fa.mountFDs[key]; done {
			continue
		}
		if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, fanotifyMask, unix.AT_FDCWD, p); err != nil {
			if p == points[0] || isRootPath(fa.roots, p) {
				return fail(fmt.Errorf("fanotify mark filesystem of %s: %w", p, err))
			}
			degraded = append(degraded, p)
			log.Warn("cannot mark filesystem; its changes are caught by full rescans only", zap.String("mount", p), zap.Error(err))
			continue
		}
		mfd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Errorf("open mount %s: %w", p, err))
		}
		fa.mountFDs[key] = mfd
		fa.lim.Filesystems = append(fa.lim.Filesystems, p)
	}
	if len(degraded) > 0 {
		fa.lim.Degraded = "filesystems not marked (full rescans only): " + strings.Join(degraded, ", ")
	}
	return fa, nil
}

func isRootPath(roots []rootMap, p string) bool {
	for _, r := range roots {
		if r.real == p {
			return true
		}
	}
	return false
}

func fsidKey(a, b int32) [8]byte {
	var k [8]byte
	binary.LittleEndian.PutUint32(k[:4], uint32(a))
	binary.LittleEndian.PutUint32(k[4:], uint32(b))
	return k
}

// markPoints lists the real roots and every mount point below them (minus
// pseudo filesystems), roots first.
func markPoints(roots []rootMap) ([]string, error) {
	var pts []string
	for _, r := range roots {
		pts = append(pts, r.real)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	defer f.Close()
	var subs []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		mp := unescapeMount(fields[4])
		fstype := ""
		for i, x := range fields {
			if x == "-" && i+1 < len(fields) {
				fstype = fields[i+1]
				break
			}
		}
		if pseudoFS[fstype] {
			continue
		}
		for _, r := range roots {
			if mp != r.real && under(mp, r.real) {
				subs = append(subs, mp)
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	sort.Strings(subs)
	return append(pts, subs...), nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func (fa *fanotify) limits() Limits { return fa.lim }

func (fa *fanotify) seen() uint64 { return fa.nseen.Load() }

func (fa *fanotify) close() error {
	for k, fd := range fa.mountFDs {
		unix.Close(fd)
		delete(fa.mountFDs, k)
	}
	return fa.f.Close()
}

func (fa *fanotify) run(ctx context.Context, emit func(event)) error {
	stop := context.AfterFunc(ctx, func() { fa.f.Close() })
	defer stop()
	buf := make([]byte, 256<<10)
	for {
		n, err := fa.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			return fmt.Errorf("read fanotify: %w", err)
		}
		fa.parse(buf[:n], emit)
		if !pace(ctx, n, len(buf)) {
			return nil
		}
	}
}

const metaSize = int(unsafe.Sizeof(unix.FanotifyEventMetadata{}))

// parse decodes a read buffer of fanotify events.
func (fa *fanotify) parse(buf []byte, emit func(event)) {
	for off := 0; off+metaSize <= len(buf); {
		meta := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[off]))
		evLen := int(meta.Event_len)
		if evLen < metaSize || off+evLen > len(buf) {
			fa.log.Error("malformed fanotify event; requesting a full rescan", zap.Int("len", evLen))
			emit(event{kind: kindOverflow})
			return
		}
		if meta.Vers != unix.FANOTIFY_METADATA_VERSION {
			fa.log.Error("unexpected fanotify metadata version", zap.Uint8("version", meta.Vers))
		}
		if meta.Fd >= 0 {
			unix.Close(int(meta.Fd))
		}
		fa.nseen.Add(1)
		mask := meta.Mask
		rec := buf[off+int(meta.Metadata_len) : off+evLen]
		off += evLen
		if mask&unix.FAN_Q_OVERFLOW != 0 {
			fa.log.Warn("fanotify queue overflowed; requesting a full rescan")
			emit(event{kind: kindOverflow})
			continue
		}
		isDir := mask&unix.FAN_ONDIR != 0
		if isDir && mask&(unix.FAN_MOVED_FROM|unix.FAN_MOVED_TO|unix.FAN_DELETE) != 0 {
			// Cached directory paths below a moved or deleted directory are stale.
			fa.cacheMu.Lock()
			clear(fa.cache)
			fa.cacheMu.Unlock()
		}
		for len(rec) >= 4 {
			typ := rec[0]
			l := int(binary.NativeEndian.Uint16(rec[2:4]))
			if l < 4 || l > len(rec) {
				break
			}
			info := rec[:l]
			rec = rec[l:]
			if typ != unix.FAN_EVENT_INFO_TYPE_DFID_NAME && typ != unix.FAN_EVENT_INFO_TYPE_DFID {
				continue
			}
			p, ok := fa.resolve(info, typ == unix.FAN_EVENT_INFO_TYPE_DFID_NAME)
			if !ok {
				continue
			}
			given, ok := fa.toGiven(p)
			if !ok {
				continue
			}
			k := kindChanged
			if isDir && mask&(unix.FAN_CREATE|unix.FAN_MOVED_TO) != 0 {
				k = kindNewDir
			}
			emit(event{path: given, kind: k})
		}
	}
}

// resolve turns a DFID(_NAME) info record into a path.
func (fa *fanotify) resolve(info []byte, withName bool) (string, bool) {
	// header(4) fsid(8) file_handle{bytes u32, type i32, f_handle[bytes]} [name\0]
	if len(info) < 4+8+8 {
		return "", false
	}
	fsid := [8]byte(info[4:12])
	hb := int(binary.NativeEndian.Uint32(info[12:16]))
	htype := int32(binary.NativeEndian.Uint32(info[16:20]))
	if 20+hb > len(info) {
		return "", false
	}
	handle := info[20 : 20+hb]
	name := ""
	if withName {
		rest := info[20+hb:]
		if i := indexByte(rest, 0); i >= 0 {
			rest = rest[:i]
		}
		name = string(rest)
	}
	key := string(info[4 : 20+hb])
	fa.cacheMu.Lock()
	dir, ok := fa.cache[key]
	fa.cacheMu.Unlock()
	if !ok {
		mfd, known := fa.mountFDs[fsid]
		if !known {
			return "", false
		}
		fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(htype, handle), unix.O_PATH|unix.O_CLOEXEC)
		if err != nil {
			// The directory is gone (ESTALE): its removal is reported on its parent.
			return "", false
		}
		dir, err = os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		unix.Close(fd)
		if err != nil || strings.HasSuffix(dir, " (deleted)") || !strings.HasPrefix(dir, "/") {
			return "", false
		}
		fa.cacheMu.Lock()
		if len(fa.cache) >= maxHandleCache {
			clear(fa.cache)
		}
		fa.cache[key] = dir
		fa.cacheMu.Unlock()
	}
	if name == "" || name == "." {
		return dir, true
	}
	if dir == "/" {
		return "/" + name, true
	}
	return dir + "/" + name, true
}

// toGiven maps a real path under a real root to the same path under the root
// as given, and reports whether it is under a root at all.
func (fa *fanotify) toGiven(p string) (string, bool) {
	for _, r := range fa.roots {
		if under(p, r.real) {
			if r.real == r.given {
				return p, true
			}
			return r.given + p[len(r.real):], true
		}
	}
	return "", false
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}
