package meta

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"sync"
)

// idTable maps numeric IDs to names and back from a passwd- or group-style
// file (name:x:id:...), parsed directly (no NSS, works with CGO off).
// Lookups are cached; a lookup that misses reloads the file when it changed
// since it was read, so users added while the agent runs are found.
type idTable struct {
	path string

	mu     sync.Mutex
	loaded bool
	stamp  [3]int64 // size, mtime ns, inode of the file last read
	byID   map[uint32]string
	byName map[string]uint32
}

var (
	users  = &idTable{path: "/etc/passwd"}
	groups = &idTable{path: "/etc/group"}
)

// UserName is the name of uid in /etc/passwd, or "" when unknown.
func UserName(uid uint32) string { return users.name(uid) }

// GroupName is the name of gid in /etc/group, or "" when unknown.
func GroupName(gid uint32) string { return groups.name(gid) }

// LookupUser is the uid of name in /etc/passwd.
func LookupUser(name string) (uint32, bool) { return users.id(name) }

// LookupGroup is the gid of name in /etc/group.
func LookupGroup(name string) (uint32, bool) { return groups.id(name) }

func (t *idTable) name(id uint32) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.loaded {
		t.reload()
	}
	if n, ok := t.byID[id]; ok {
		return n
	}
	if t.reload() {
		if n, ok := t.byID[id]; ok {
			return n
		}
	}
	t.byID[id] = "" // negative cache until the file changes
	return ""
}

func (t *idTable) id(name string) (uint32, bool) {
	if name == "" {
		return 0, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.loaded {
		t.reload()
	}
	if id, ok := t.byName[name]; ok {
		return id, true
	}
	if t.reload() {
		id, ok := t.byName[name]
		return id, ok
	}
	return 0, false
}

// reload reads the file again if it changed; it reports whether it did.
func (t *idTable) reload() bool {
	fi, err := os.Stat(t.path)
	var stamp [3]int64
	if err == nil {
		stamp = [3]int64{fi.Size(), fi.ModTime().UnixNano(), inodeOf(fi)}
	}
	if t.loaded && stamp == t.stamp {
		return false
	}
	t.loaded, t.stamp = true, stamp
	t.byID, t.byName = map[uint32]string{}, map[string]uint32{}
	b, err := os.ReadFile(t.path)
	if err != nil {
		return true
	}
	parseIDs(b, t.byID, t.byName)
	return true
}

// parseIDs reads name:password:id lines; the first entry for a name or an
// id wins, as with getpwnam and getpwuid.
func parseIDs(b []byte, byID map[uint32]string, byName map[string]uint32) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		f := bytes.SplitN(line, []byte{':'}, 4)
		if len(f) < 3 || len(f[0]) == 0 {
			continue
		}
		id, err := strconv.ParseUint(string(f[2]), 10, 32)
		if err != nil {
			continue
		}
		name := string(f[0])
		if _, ok := byID[uint32(id)]; !ok {
			byID[uint32(id)] = name
		}
		if _, ok := byName[name]; !ok {
			byName[name] = uint32(id)
		}
	}
}
