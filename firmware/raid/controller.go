package raid

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/firmware/config"
	"vaultnode/firmware/disk"
	"vaultnode/internal/atomicfile"
	"vaultnode/internal/clock"
	sh "vaultnode/internal/storagehealth"
)

// Default md sync speed limits, KiB/s per disk. md drops to the minimum
// while the array has other I/O, so backups keep most of the disks during
// a rebuild or a scrub; the maximum bounds an idle rebuild.
const (
	DefaultSpeedMin = 5000
	DefaultSpeedMax = 200000
)

// Sentinel errors.
var (
	ErrNotCandidate = errors.New("disk cannot be used")
	ErrNoArray      = errors.New("the data volume is not an md array")
	ErrBusy         = errors.New("the array is busy")
	// ErrNeedsErase: the disk holds data (md metadata, a filesystem, a
	// partition table) and the operator did not confirm erasing it.
	ErrNeedsErase = errors.New("disk holds data")
	// ErrTooSmall: the disk is smaller than what a member of the array uses.
	ErrTooSmall = errors.New("disk too small for the array")
)

// Runner runs a program and returns its combined output (the firmware's
// reaper).
type Runner interface {
	Output(ctx context.Context, cmd *exec.Cmd) ([]byte, error)
}

// Options configure a Controller.
type Options struct {
	Log      *zap.Logger
	Clock    clock.Clock
	Run      Runner
	Mdadm    string // path of mdadm
	Mke2fs   string // path of mke2fs
	Smartctl string // path of smartctl; "" when the image has none
	MD       string // the data array, /dev/md0
	// Proc and Sys are the roots of procfs and sysfs (tests: a copy).
	Proc, Sys string
	// StatePath receives the storage report every poll (storagehealth).
	StatePath string
	// BookPath keeps the scrub's results across boots (on the system disk).
	BookPath string
	// SystemDisk is the system disk's kernel name: never a data candidate.
	SystemDisk string
	// LoadModule loads a kernel module (raid456 and raid10 are on demand).
	LoadModule func(name string) error
	// Announce prints a line on the console.
	Announce func(string)
	// Save saves a changed data section of the configuration.
	Save func(config.Data) error
	// Interval between polls; default 2 s.
	Interval time.Duration
	// Zone is the appliance's time zone, in which the scrub schedule is
	// read; nil: UTC.
	Zone *time.Location
	// SpeedMin, SpeedMax override the configuration's limits (kernel
	// command line vaultnode.mdspeed=MIN,MAX); zero: the configuration's.
	SpeedMin, SpeedMax int
	// List lists the disks; nil: disk.List (tests: a fixed list).
	List func() ([]disk.Disk, error)
}

// Candidate is a disk Replace accepts.
type Candidate struct {
	Name string
	ID   string
	Size int64
	// HoldsData: not blank (a former member of this array): Replace
	// needs the erase confirmation.
	HoldsData bool
}

// Controller is the array controller of the data volume.
type Controller struct {
	o Options

	pollMu    sync.Mutex // one poll at a time (Run and Replace)
	mu        sync.Mutex
	data      config.Data
	dev       string // device of the data filesystem
	report    sh.Report
	announced map[string]bool
	examined  map[string]bool // name/serial of a non-blank disk: carries this array's superblock
	cands     []Candidate     // at the last poll
	minSize   int64           // bytes a new member needs, at the last poll (0: unknown)
	lastState string
	lastAct   string
	book      book
	smart     map[string]Smart
	smartAt   time.Time
	sched     Schedule
}

// book is what the controller remembers on the system disk.
type book struct {
	Created    time.Time `json:"created"`
	LastCheck  time.Time `json:"last_check,omitzero"`
	Mismatches int64     `json:"mismatches"`
}

// New makes a controller for the configured data section.
func New(o Options, data config.Data) (*Controller, error) {
	if o.Interval == 0 {
		o.Interval = 2 * time.Second
	}
	if o.Proc == "" {
		o.Proc = "/proc"
	}
	if o.Sys == "" {
		o.Sys = "/sys"
	}
	if o.Announce == nil {
		o.Announce = func(string) {}
	}
	if o.Zone == nil {
		o.Zone = time.UTC
	}
	if o.List == nil {
		o.List = disk.List
	}
	sc, err := ParseSchedule(data.Scrub)
	if err != nil {
		return nil, err
	}
	c := &Controller{o: o, data: data, announced: map[string]bool{}, examined: map[string]bool{}, smart: map[string]Smart{}, sched: sc}
	c.loadBook()
	return c, nil
}

// Data is the configuration's data section as the controller keeps it.
func (c *Controller) Data() config.Data {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.data
}

// Device is the data filesystem's device once created or started.
func (c *Controller) Device() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dev
}

// IsArray reports whether the data volume is an md array.
func (c *Controller) IsArray() bool { return c.Data().Level != Single && c.Data().Level != "" }

func (c *Controller) mdadm(ctx context.Context, args ...string) (string, error) {
	out, err := c.o.Run.Output(ctx, exec.Command(c.o.Mdadm, args...))
	return string(out), err
}

func (c *Controller) loadFor(level string) error {
	if c.o.LoadModule == nil {
		return nil
	}
	switch level {
	case RAID5, RAID6:
		return c.o.LoadModule("raid456")
	case RAID10:
		return c.o.LoadModule("raid10")
	}
	return nil
}

// Create builds the planned layout on blank disks (found by ID in disks),
// makes the ext4 filesystem and returns the data section to save. It
// refuses any disk that is not blank: setup offers only blank disks.
func (c *Controller) Create(ctx context.Context, l Layout, disks []disk.Disk) (config.Data, error) {
	var devs, spares []string
	for i, id := range append(append([]string(nil), l.Disks...), l.Spares...) {
		d, ok := disk.Find(disks, id)
		if !ok {
			return config.Data{}, fmt.Errorf("create data volume: disk %s is missing", id)
		}
		if !d.Blank {
			return config.Data{}, fmt.Errorf("create data volume: %w: %s holds data", ErrNotCandidate, d.Name)
		}
		if i < len(l.Disks) {
			devs = append(devs, d.Dev())
		} else {
			spares = append(spares, d.Dev())
		}
	}
	data := c.Data()
	data.Level, data.Disks, data.Spares = l.Level, l.Disks, l.Spares
	dev := devs[0]
	if l.Level != Single {
		if err := c.loadFor(l.Level); err != nil {
			return config.Data{}, fmt.Errorf("create %s: %w", l.Level, err)
		}
		args := []string{"--create", c.o.MD, "--run", "--level=" + l.Level, fmt.Sprintf("--raid-devices=%d", len(devs)),
			"--metadata=1.2", "--homehost=any", "--name=vndata"}
		if len(spares) > 0 {
			args = append(args, fmt.Sprintf("--spare-devices=%d", len(spares)))
		}
		if _, err := c.mdadm(ctx, append(append(args, devs...), spares...)...); err != nil {
			return config.Data{}, fmt.Errorf("create %s array %s: %w", l.Level, c.o.MD, err)
		}
		uuid, err := c.arrayUUID(ctx)
		if err != nil {
			return config.Data{}, err
		}
		data.ArrayUUID = uuid
		dev = c.o.MD
		c.setSpeed(data)
	}
	if _, err := c.o.Run.Output(ctx, exec.Command(c.o.Mke2fs, "-q", "-F", "-t", "ext4", "-L", "vndata",
		"-E", "lazy_itable_init=1,lazy_journal_init=1", dev)); err != nil {
		return config.Data{}, fmt.Errorf("format %s: %w", dev, err)
	}
	c.mu.Lock()
	c.data, c.dev = data, dev
	c.book = book{Created: c.o.Clock.Now()}
	c.mu.Unlock()
	c.saveBook()
	return data, nil
}

// arrayUUID asks mdadm for the running array's UUID.
func (c *Controller) arrayUUID(ctx context.Context) (string, error) {
	out, err := c.mdadm(ctx, "--detail", "--export", c.o.MD)
	if err != nil {
		return "", fmt.Errorf("read the UUID of %s: %w", c.o.MD, err)
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MD_UUID="); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("read the UUID of %s: mdadm --detail --export printed no MD_UUID", c.o.MD)
}

// Start finds the data volume at boot: the one disk, or the array
// assembled by its UUID from whatever disks carry it (degraded when members
// are missing). It returns the problems an operator must know.
func (c *Controller) Start(ctx context.Context, disks []disk.Disk) ([]string, error) {
	data := c.Data()
	var problems []string
	if !c.IsArray() {
		if len(data.Disks) == 0 {
			return nil, errors.New("the configuration names no data disk: run setup again")
		}
		d, ok := disk.Find(disks, data.Disks[0])
		if !ok {
			return nil, fmt.Errorf("data disk %s is missing: reattach it", data.Disks[0])
		}
		c.mu.Lock()
		c.dev = d.Dev()
		c.mu.Unlock()
		return nil, nil
	}
	if err := c.loadFor(data.Level); err != nil {
		return nil, fmt.Errorf("start %s: %w", data.Level, err)
	}
	args := []string{"--assemble", c.o.MD, "--run"}
	var devs []string
	if data.ArrayUUID != "" {
		args = append(args, "--uuid="+data.ArrayUUID)
		for _, d := range disks {
			if d.Name != c.o.SystemDisk && !d.Blank {
				devs = append(devs, d.Dev())
			}
		}
	} else { // configurations from before the UUID was kept
		for _, id := range append(append([]string(nil), data.Disks...), data.Spares...) {
			if d, ok := disk.Find(disks, id); ok {
				devs = append(devs, d.Dev())
			}
		}
	}
	for _, id := range data.Disks {
		if _, ok := disk.Find(disks, id); !ok {
			problems = append(problems, fmt.Sprintf("data disk %s is missing: the array runs degraded; reattach or replace it", id))
		}
	}
	if len(devs) == 0 {
		return problems, fmt.Errorf("assemble %s: no disk of the array is present", c.o.MD)
	}
	out, err := c.mdadm(ctx, append(args, devs...)...)
	if err != nil && strings.Contains(out, "not clean") {
		// A power cut while the array was degraded (during a rebuild, or
		// with a disk missing) leaves it dirty and degraded, and md refuses
		// to start it ("cannot start dirty degraded array"): the stripes
		// being written at the cut may have parity that no longer matches,
		// and the missing member's blocks of those stripes cannot be told
		// from the rest. Refusing leaves the vault down until someone types
		// mdadm --force on a console; the vault's own checks (every entry is
		// sealed: a wrong block reads as damaged, never as data) make
		// starting it the better choice, with a verify to find what the cut
		// damaged. So: start it once with md's start_dirty_degraded, then
		// put the parameter back, and say so.
		param := filepath.Join(c.o.Sys, "module", "md_mod", "parameters", "start_dirty_degraded")
		if werr := os.WriteFile(param, []byte("1"), 0o644); werr == nil {
			_, _ = c.mdadm(ctx, "--stop", c.o.MD) // the refused assembly leaves it inactive
			out, err = c.mdadm(ctx, append(args, devs...)...)
			_ = os.WriteFile(param, []byte("0"), 0o644)
			if err == nil {
				problems = append(problems, fmt.Sprintf("%s was not clean when it lost a member (a power cut during a rebuild or while degraded): "+
					"started anyway; stripes written at the cut may be damaged: run `vaultctl verify`, which quarantines what it finds for the next backup to heal", c.o.MD))
			}
		} else {
			c.o.Log.Warn("cannot allow a dirty degraded start", zap.Error(werr))
		}
	}
	if err != nil {
		return problems, fmt.Errorf("assemble %s from %s: %w (%s)", c.o.MD, strings.Join(devs, " "), err, strings.TrimSpace(out))
	}
	c.o.Log.Info("array assembled", zap.String("array", c.o.MD), zap.String("mdadm", strings.TrimSpace(out)))
	c.setSpeed(data)
	c.mu.Lock()
	c.dev = c.o.MD
	c.mu.Unlock()
	return problems, nil
}

// setSpeed sets md's sync speed limits of the array.
func (c *Controller) setSpeed(data config.Data) {
	lo, hi := data.SyncSpeedMin, data.SyncSpeedMax
	if lo == 0 {
		lo = DefaultSpeedMin
	}
	if hi == 0 {
		hi = DefaultSpeedMax
	}
	if c.o.SpeedMin > 0 {
		lo = c.o.SpeedMin
	}
	if c.o.SpeedMax > 0 {
		hi = c.o.SpeedMax
	}
	if err := c.SetSpeed(lo, hi); err != nil {
		c.o.Log.Warn("set md speed limits", zap.Error(err))
	}
}

// SetSpeed sets the array's sync speed limits, KiB/s per disk.
func (c *Controller) SetSpeed(lo, hi int) error {
	if lo <= 0 || hi < lo {
		return fmt.Errorf("set md speed: want 0 < MIN <= MAX KiB/s, got %d %d", lo, hi)
	}
	dir := c.mdDir()
	// Write the maximum first when lowering it below the old minimum is
	// refused, and the minimum first otherwise: try both orders.
	err := errors.Join(os.WriteFile(filepath.Join(dir, "sync_speed_min"), []byte(strconv.Itoa(lo)), 0),
		os.WriteFile(filepath.Join(dir, "sync_speed_max"), []byte(strconv.Itoa(hi)), 0))
	if err != nil {
		err = errors.Join(os.WriteFile(filepath.Join(dir, "sync_speed_max"), []byte(strconv.Itoa(hi)), 0),
			os.WriteFile(filepath.Join(dir, "sync_speed_min"), []byte(strconv.Itoa(lo)), 0))
	}
	if err != nil {
		return fmt.Errorf("set md speed limits of %s: %w", c.o.MD, err)
	}
	c.o.Log.Info("md speed limits set", zap.Int("min_kib", lo), zap.Int("max_kib", hi))
	return nil
}

func (c *Controller) mdDir() string {
	return filepath.Join(c.o.Sys, "block", filepath.Base(c.o.MD), "md")
}

// Stop stops the array at shutdown, after the filesystem is unmounted (the
// reaper has stopped: STOP_ARRAY ioctl, no mdadm).
func (c *Controller) Stop() error {
	if !c.IsArray() || c.Device() == "" {
		return nil
	}
	const stopArrayIoctl = 0x932 // _IO(MD_MAJOR, 0x32)
	fd, err := unix.Open(c.o.MD, unix.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("stop %s: %w", c.o.MD, err)
	}
	defer unix.Close(fd)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), stopArrayIoctl, 0); errno != 0 {
		return fmt.Errorf("stop %s: %w", c.o.MD, errno)
	}
	return nil
}

// Run polls until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	for {
		c.Poll(ctx)
		t := c.o.Clock.NewTimer(c.o.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

// Report is the storage's state at the last poll.
func (c *Controller) Report() sh.Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.report
}

// Poll reads the arrays and the disks, reacts to a vanished or failed
// member, starts a scheduled scrub, and publishes the report.
func (c *Controller) Poll(ctx context.Context) sh.Report {
	c.pollMu.Lock()
	defer c.pollMu.Unlock()
	disks, _ := c.o.List()
	data := c.Data()
	var minSize int64
	r := sh.Report{State: sh.Clean, Updated: c.o.Clock.Now()}
	members := map[string]bool{}
	if !c.IsArray() {
		if len(data.Disks) > 0 {
			r.Single = data.Disks[0]
			d, ok := disk.Find(disks, data.Disks[0])
			if ok {
				members[d.Name] = true
				r.Detail = fmt.Sprintf("one data disk %s (%s), no redundancy", d.Name, d.ID)
			} else {
				r.State = sh.Failed
				r.Detail = fmt.Sprintf("data disk %s is gone: the data volume cannot be read or written", data.Disks[0])
			}
		}
	} else {
		arrays, err := readArrays(c.o.Proc, c.o.Sys)
		if err != nil {
			c.o.Log.Warn("read md state", zap.Error(err))
		}
		name := filepath.Base(c.o.MD)
		var mine *sh.Array
		for i := range arrays {
			if arrays[i].Name == name {
				mine = &arrays[i]
			}
		}
		if mine != nil && c.react(*mine) {
			if again, err := readArrays(c.o.Proc, c.o.Sys); err == nil {
				arrays = again
				for i := range arrays {
					if arrays[i].Name == name {
						mine = &arrays[i]
					}
				}
			}
		}
		if mine != nil {
			// md marks a pulled disk faulty only at its next I/O, and may
			// refuse to fail a member it cannot spare: a member whose disk
			// is gone is not in sync, whatever md still says.
			gone := false
			for i, m := range mine.Members {
				if _, err := os.Stat(filepath.Join(c.o.Sys, "block", m.Device)); errors.Is(err, os.ErrNotExist) && !strings.Contains(m.State, "faulty") {
					mine.Members[i].State = "faulty,gone"
					gone = true
				}
			}
			if gone {
				classify(mine, mine.State == sh.Failed)
			}
		}
		if mine == nil {
			r.State = sh.Failed
			r.Detail = fmt.Sprintf("array %s is not running: the data volume cannot be read or written", name)
		} else {
			for i := range mine.Members {
				members[mine.Members[i].Device] = true
				if d, ok := disk.Find(disks, mine.Members[i].Device); ok {
					mine.Members[i].ID = d.ID
				}
			}
			minSize = c.memberSize(*mine)
			c.reconcile(*mine)
			c.scrubbing(ctx, mine)
			c.mu.Lock()
			bk := c.book
			c.mu.Unlock()
			mine.LastCheck = bk.LastCheck
			if mine.Action == "idle" && !bk.LastCheck.IsZero() {
				mine.Mismatches = bk.Mismatches
			}
			r.State, r.Detail = mine.State, describe(*mine)
			r.Arrays = []sh.Array{*mine}
		}
	}
	var cands []Candidate
	for _, d := range disks {
		if d.Name == c.o.SystemDisk || members[d.Name] || d.Size < minSize {
			continue // a disk smaller than a member's used size cannot rebuild it
		}
		if d.Blank || c.formerMember(ctx, d) {
			r.Candidates = append(r.Candidates, d.Name)
			cands = append(cands, Candidate{Name: d.Name, ID: d.ID, Size: d.Size, HoldsData: !d.Blank})
		}
	}
	c.mu.Lock()
	c.cands, c.minSize = cands, minSize
	c.mu.Unlock()
	r.Disks = c.smartOf(ctx, disks, members)
	c.publish(r)
	return r
}

// memberSize is the number of bytes a disk needs to become a member of a:
// what a member uses, md's component_size (KiB per member), after the
// largest data offset of the members (dev-X/offset, sectors). dev-X/size
// is not it: it counts all the room on a larger member's disk.
func (c *Controller) memberSize(a sh.Array) int64 {
	num := func(p string) int64 {
		b, err := os.ReadFile(p)
		if err != nil {
			return 0
		}
		v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return v
	}
	used := num(filepath.Join(c.mdDir(), "component_size")) * 1024
	if used == 0 {
		return 0 // unknown: mdadm decides
	}
	var off int64
	for _, m := range a.Members {
		off = max(off, num(filepath.Join(c.mdDir(), "dev-"+m.Device, "offset"))*512)
	}
	return off + used
}

// reconcile keeps the configuration's members in step with md: a hot
// spare md rebuilt onto takes the place of the configured member md no
// longer holds.
func (c *Controller) reconcile(a sh.Array) {
	if a.Action == "recover" {
		return // the spare is not in sync yet
	}
	member, inSync := map[string]bool{}, map[string]bool{}
	for _, m := range a.Members {
		if m.ID == "" {
			continue
		}
		member[m.ID] = true
		if slices.Contains(strings.Split(m.State, ","), "in_sync") {
			inSync[m.ID] = true
		}
	}
	data := c.Data()
	disks := slices.Clone(data.Disks)
	var spares []string
	changed := false
	for _, sp := range data.Spares {
		i := slices.IndexFunc(disks, func(id string) bool { return !member[id] })
		if !inSync[sp] || i < 0 {
			spares = append(spares, sp)
			continue
		}
		c.o.Log.Warn("a hot spare replaced a member", zap.String("spare", sp), zap.String("member", disks[i]))
		c.o.Announce(fmt.Sprintf("*** raid: hot spare %s took the place of %s in %s", sp, disks[i], a.Name))
		disks[i] = sp
		changed = true
	}
	if !changed {
		return
	}
	data.Disks, data.Spares = disks, spares
	c.mu.Lock()
	c.data = data
	c.mu.Unlock()
	if c.o.Save != nil {
		if err := c.o.Save(data); err != nil {
			c.o.Log.Warn("save the configuration after a spare's rebuild", zap.Error(err))
		}
	}
}

// react marks members whose disk vanished as faulty and removes faulty
// members, so that the slot is free for a replacement. md itself notices a
// pulled disk only at its next I/O. It reports whether it changed anything.
func (c *Controller) react(a sh.Array) bool {
	changed := false
	for _, m := range a.Members {
		dir := filepath.Join(c.mdDir(), "dev-"+m.Device)
		if _, err := os.Stat(filepath.Join(c.o.Sys, "block", m.Device)); errors.Is(err, os.ErrNotExist) && !strings.Contains(m.State, "faulty") {
			c.o.Log.Warn("array member vanished: marking it faulty", zap.String("member", m.Device))
			c.o.Announce(fmt.Sprintf("*** raid: disk %s of %s is gone; marked faulty", m.Device, a.Name))
			if err := os.WriteFile(filepath.Join(dir, "state"), []byte("faulty"), 0); err != nil {
				c.o.Log.Warn("mark member faulty", zap.String("member", m.Device), zap.Error(err))
			}
			changed = true
			m.State = "faulty"
		}
		if strings.Contains(m.State, "faulty") {
			if err := os.WriteFile(filepath.Join(dir, "state"), []byte("remove"), 0); err != nil {
				c.o.Log.Warn("remove faulty member", zap.String("member", m.Device), zap.Error(err))
			} else {
				c.o.Log.Warn("faulty member removed from the array", zap.String("member", m.Device))
				c.o.Announce(fmt.Sprintf("*** raid: faulty disk %s removed from %s", m.Device, a.Name))
				changed = true
			}
		}
	}
	return changed
}

// formerMember reports whether d carries this array's superblock (a
// member that dropped out: using it again needs a confirmation too).
func (c *Controller) formerMember(ctx context.Context, d disk.Disk) bool {
	uuid := c.Data().ArrayUUID
	if uuid == "" {
		return false
	}
	key := d.Name + "/" + d.ID
	c.mu.Lock()
	v, ok := c.examined[key]
	c.mu.Unlock()
	if ok {
		return v
	}
	out, err := c.mdadm(ctx, "--examine", "--export", d.Dev())
	v = err == nil && strings.Contains(out, "MD_UUID="+uuid)
	c.mu.Lock()
	c.examined[key] = v
	c.mu.Unlock()
	return v
}

// publish keeps the report, writes it for the vault and tells the console
// of state changes and new candidate disks.
func (c *Controller) publish(r sh.Report) {
	c.mu.Lock()
	c.report = r
	prev := c.lastState
	c.lastState = r.State
	var news []string
	for _, n := range r.Candidates {
		if !c.announced[n] {
			c.announced[n] = true
			news = append(news, n)
		}
	}
	for n := range c.announced {
		if !slices.Contains(r.Candidates, n) {
			delete(c.announced, n)
		}
	}
	c.mu.Unlock()
	if c.o.StatePath != "" {
		if err := os.MkdirAll(filepath.Dir(c.o.StatePath), 0o755); err == nil {
			if err := sh.Save(c.o.StatePath, r); err != nil {
				c.o.Log.Warn("publish storage state", zap.Error(err))
			}
		}
	}
	if prev != r.State {
		c.o.Log.Warn("storage state", zap.String("state", r.State), zap.String("detail", r.Detail))
		if prev != "" || r.State != sh.Clean {
			c.o.Announce(fmt.Sprintf("*** storage %s: %s", r.State, r.Detail))
		}
	}
	for _, n := range news {
		what := "a hot spare"
		if r.State == sh.Degraded || r.State == sh.Failed {
			what = "the missing disk's replacement"
		}
		if c.IsArray() {
			c.o.Announce(fmt.Sprintf("*** raid: disk %s can become %s: type 'disk replace %s' in the support shell or run 'vaultctl disk replace %s'", n, what, n, n))
		}
	}
}

// Candidates are the disks Replace accepts.
func (c *Controller) Candidates() []string { return c.Report().Candidates }

// CandidateDisks are the disks Replace accepts, with their size and
// whether they hold data (then Replace needs the erase confirmation).
func (c *Controller) CandidateDisks() []Candidate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.cands)
}

// Replace adds disk name to the array: it rebuilds at once in a missing
// member's place, or becomes a hot spare. A disk that is not blank is
// refused unless erase is true (the operator confirmed losing what it
// holds), a former member of this array too: its metadata is data md
// would otherwise take back. A disk smaller than a member's used size is
// refused before mdadm runs.
func (c *Controller) Replace(ctx context.Context, name string, erase bool) (string, error) {
	if !c.IsArray() {
		return "", fmt.Errorf("replace %s: %w: a single-disk volume has no array to rebuild", name, ErrNoArray)
	}
	name = strings.TrimPrefix(name, "/dev/")
	disks, err := c.o.List()
	if err != nil {
		return "", err
	}
	d, ok := disk.Find(disks, name)
	switch {
	case !ok:
		return "", fmt.Errorf("replace %s: %w: no such disk; the candidates are %v", name, ErrNotCandidate, c.Candidates())
	case d.Name == c.o.SystemDisk:
		return "", fmt.Errorf("replace %s: %w: it is the system disk", name, ErrNotCandidate)
	}
	r := c.Report()
	for _, a := range r.Arrays {
		for _, m := range a.Members {
			if m.Device == d.Name {
				return "", fmt.Errorf("replace %s: %w: it is already a member of %s (%s)", name, ErrNotCandidate, a.Name, m.State)
			}
		}
	}
	c.mu.Lock()
	need := c.minSize
	c.mu.Unlock()
	if d.Size < need {
		return "", fmt.Errorf("replace %s: %w: it has %d MiB, a member of %s uses %d MiB; use a disk at least that large",
			name, ErrTooSmall, d.Size>>20, c.o.MD, (need+(1<<20)-1)>>20)
	}
	if !d.Blank {
		if !erase {
			what := "it holds data (a filesystem, a partition table or md metadata)"
			if slices.Contains(r.Candidates, d.Name) {
				what = "it holds data (it was a member of this array)"
			}
			return "", fmt.Errorf("replace %s: %w: %s; confirm erasing it (vaultctl disk replace %s -erase, or answer ERASE on the console)", name, ErrNeedsErase, what, name)
		}
		c.o.Log.Warn("erasing a disk the operator confirmed", zap.String("disk", d.Name), zap.String("id", d.ID))
		_, _ = c.mdadm(ctx, "--zero-superblock", "--force", d.Dev())
		if err := wipeStart(d.Dev()); err != nil {
			return "", fmt.Errorf("replace %s: %w", name, err)
		}
	}
	c.mu.Lock()
	delete(c.examined, d.Name+"/"+d.ID)
	c.mu.Unlock()
	if _, err := c.mdadm(ctx, c.o.MD, "--add", d.Dev()); err != nil {
		return "", fmt.Errorf("add %s to %s: %w", d.Name, c.o.MD, err)
	}
	// The configuration: the new disk takes a missing member's place, or
	// joins the spares.
	data := c.Data()
	present := map[string]bool{}
	for _, a := range r.Arrays {
		for _, m := range a.Members {
			present[m.ID] = true
		}
	}
	msg := fmt.Sprintf("%s (%s) added to %s as a hot spare", d.Name, d.ID, c.o.MD)
	replaced := false
	for i, id := range data.Disks {
		if !present[id] {
			msg = fmt.Sprintf("%s (%s) replaces %s in %s: rebuilding", d.Name, d.ID, id, c.o.MD)
			data.Disks = slices.Clone(data.Disks)
			data.Disks[i] = d.ID
			replaced = true
			break
		}
	}
	if !replaced {
		data.Spares = append(slices.Clone(data.Spares), d.ID)
		// A spare that replaced nobody in the configuration may still be
		// rebuilding in a slot md freed: say so.
		if r.State == sh.Degraded {
			msg = fmt.Sprintf("%s (%s) added to %s: rebuilding", d.Name, d.ID, c.o.MD)
		}
	}
	var kept []string
	for _, id := range data.Spares {
		if present[id] || id == d.ID {
			kept = append(kept, id)
		}
	}
	data.Spares = kept
	c.mu.Lock()
	c.data = data
	c.mu.Unlock()
	if c.o.Save != nil {
		if err := c.o.Save(data); err != nil {
			return msg, fmt.Errorf("%s, but the configuration was not saved: %w", msg, err)
		}
	}
	c.o.Log.Warn("disk added to the array", zap.String("disk", d.Name), zap.String("id", d.ID), zap.String("what", msg))
	c.Poll(ctx)
	return msg, nil
}

// wipeStart zeroes a disk's first MiB (old partition tables, filesystems).
func wipeStart(dev string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("erase %s: %w", dev, err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("erase %s: %w", dev, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("erase %s: %w", dev, err)
	}
	return nil
}

// Schedule is the scrub schedule in force and when it next starts.
func (c *Controller) Schedule() (string, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.data.Scrub
	if s == "" {
		s = DefaultScrub
	}
	return s, c.sched.Next(laterOf(c.book.LastCheck, c.book.Created).In(c.o.Zone))
}

// SetSchedule changes the scrub schedule and saves it in the configuration.
func (c *Controller) SetSchedule(s string) error {
	sc, err := ParseSchedule(s)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.sched = sc
	c.data.Scrub = strings.Join(strings.Fields(strings.ToLower(s)), " ")
	data := c.data
	c.mu.Unlock()
	if c.o.Save != nil {
		if err := c.o.Save(data); err != nil {
			return fmt.Errorf("save the scrub schedule: %w", err)
		}
	}
	return nil
}

// Scrub starts md's check of the whole array now.
func (c *Controller) Scrub() error {
	if !c.IsArray() {
		return fmt.Errorf("scrub: %w", ErrNoArray)
	}
	p := filepath.Join(c.mdDir(), "sync_action")
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("scrub %s: %w", c.o.MD, err)
	}
	if act := strings.TrimSpace(string(b)); act != "idle" {
		return fmt.Errorf("scrub %s: %w: %s runs", c.o.MD, ErrBusy, act)
	}
	if err := os.WriteFile(p, []byte("check"), 0); err != nil {
		return fmt.Errorf("scrub %s: %w", c.o.MD, err)
	}
	c.o.Log.Info("scrub started", zap.String("array", c.o.MD))
	c.mu.Lock()
	c.lastAct = "check"
	c.mu.Unlock()
	return nil
}

// scrubbing starts a due scrub and records a finished one's mismatches.
func (c *Controller) scrubbing(ctx context.Context, a *sh.Array) {
	c.mu.Lock()
	prev := c.lastAct
	c.lastAct = a.Action
	due := !c.sched.Never && !c.o.Clock.Now().Before(c.sched.Next(laterOf(c.book.LastCheck, c.book.Created).In(c.o.Zone)))
	c.mu.Unlock()
	if (prev == "check" || prev == "repair") && a.Action == "idle" {
		c.mu.Lock()
		c.book.LastCheck, c.book.Mismatches = c.o.Clock.Now(), a.Mismatches
		c.mu.Unlock()
		c.saveBook()
		c.o.Log.Warn("scrub finished", zap.String("array", a.Name), zap.Int64("mismatches", a.Mismatches))
		c.o.Announce(fmt.Sprintf("*** raid: scrub of %s finished: %d mismatched sectors", a.Name, a.Mismatches))
		return
	}
	if due && a.Action == "idle" && a.State == sh.Clean {
		if err := c.Scrub(); err != nil {
			c.o.Log.Warn("scheduled scrub", zap.Error(err))
		}
	}
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (c *Controller) loadBook() {
	if c.o.BookPath != "" {
		b, err := os.ReadFile(c.o.BookPath)
		if err == nil && len(b) < 1<<16 {
			_ = json.Unmarshal(b, &c.book)
		}
	}
	if c.book.Created.IsZero() { // the schedule counts from now, not from year 1
		c.book.Created = c.o.Clock.Now()
		c.saveBook()
	}
}

func (c *Controller) saveBook() {
	if c.o.BookPath == "" {
		return
	}
	c.mu.Lock()
	b, _ := json.Marshal(c.book)
	c.mu.Unlock()
	if err := atomicfile.WriteFile(c.o.BookPath, b, 0o644); err != nil {
		c.o.Log.Warn("save raid book", zap.Error(err))
	}
}

// smartOf asks smartctl about the data disks every ten minutes.
func (c *Controller) smartOf(ctx context.Context, disks []disk.Disk, members map[string]bool) []sh.Disk {
	c.mu.Lock()
	stale := c.smartAt.IsZero() || c.o.Clock.Now().Sub(c.smartAt) > 10*time.Minute
	if stale {
		c.smartAt = c.o.Clock.Now()
	}
	c.mu.Unlock()
	var out []sh.Disk
	for _, d := range disks {
		if !members[d.Name] {
			continue
		}
		c.mu.Lock()
		s, ok := c.smart[d.Name]
		c.mu.Unlock()
		if stale || !ok {
			s = c.askSmart(ctx, d.Dev())
			c.mu.Lock()
			c.smart[d.Name] = s
			c.mu.Unlock()
			if strings.HasPrefix(s.Verdict, "FAILING") {
				c.o.Announce(fmt.Sprintf("*** raid: SMART says disk %s (%s) is %s", d.Name, d.ID, s.Verdict))
			}
		}
		out = append(out, sh.Disk{Device: d.Name, ID: d.ID, SMART: s.Verdict, Temp: s.Temp})
	}
	return out
}

func (c *Controller) askSmart(ctx context.Context, dev string) Smart {
	if c.o.Smartctl == "" {
		return Smart{Verdict: "unknown: smartctl is not in this image"}
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, _ := c.o.Run.Output(ctx, exec.Command(c.o.Smartctl, "--json=c", "-H", "-A", dev))
	s, err := ParseSmartctl(bytes.TrimSpace(out))
	if err != nil {
		return Smart{Verdict: "unknown: " + err.Error()}
	}
	return s
}
