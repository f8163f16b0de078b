package raid

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"vaultnode/firmware/config"
	"vaultnode/firmware/disk"
	"vaultnode/internal/clock"
	sh "vaultnode/internal/storagehealth"
)

func TestPlanByDiskCount(t *testing.T) {
	ids := func(n int) []string {
		var out []string
		for i := 1; i <= n; i++ {
			out = append(out, "d"+string(rune('0'+i)))
		}
		return out
	}
	for _, tt := range []struct {
		level  string
		n      int
		spares int
		want   string // level, or "" for an error
	}{
		{"", 1, 0, Single},
		{"", 2, 0, RAID1},
		{"", 3, 0, RAID5},
		{"", 4, 0, RAID6},
		{"", 6, 0, RAID6},
		{RAID10, 4, 0, RAID10},
		{RAID10, 5, 0, ""}, // odd
		{"", 4, 1, RAID5},  // 3 active + a spare
		{"", 3, 1, RAID1},
		{"", 2, 1, Single}, // one active disk...
		{RAID6, 3, 0, ""},
		{"", 3, 3, ""}, // nothing active
		{"", 2, -1, ""},
		{"raid0", 2, 0, ""}, // no level without redundancy but single
		{Single, 2, 0, ""},
	} {
		l, err := Plan(tt.level, ids(tt.n), tt.spares)
		if tt.want == "" {
			if err == nil || !errors.Is(err, ErrLayout) {
				t.Errorf("Plan(%q, %d, %d) = %+v, %v; want an ErrLayout", tt.level, tt.n, tt.spares, l, err)
			}
			continue
		}
		// A single disk with a spare makes no sense: refused.
		if tt.want == Single && tt.spares > 0 {
			if err == nil {
				t.Errorf("Plan(%q, %d, %d) = %+v: a spare beside one disk accepted", tt.level, tt.n, tt.spares, l)
			}
			continue
		}
		if err != nil || l.Level != tt.want || len(l.Disks) != tt.n-tt.spares || len(l.Spares) != tt.spares {
			t.Errorf("Plan(%q, %d, %d) = %+v, %v; want %s", tt.level, tt.n, tt.spares, l, err, tt.want)
		}
	}
	if got := Levels(4); strings.Join(got, ",") != "raid6,raid10" {
		t.Errorf("Levels(4) = %v", got)
	}
	if got := Levels(5); strings.Join(got, ",") != "raid6" {
		t.Errorf("Levels(5) = %v", got)
	}
}

func TestDescribe(t *testing.T) {
	l, _ := Plan("", []string{"a", "b", "c", "d", "e"}, 1)
	if got, want := l.Describe(100<<20), "RAID6 over 4 disks: 200 MiB usable, survives the loss of 2 disks, 1 hot spare (e) rebuilding by itself"; got != want {
		t.Errorf("Describe = %q, want %q", got, want)
	}
	one, _ := Plan("", []string{"a"}, 0)
	if one.Warning() == "" || !strings.Contains(one.Describe(1<<30), "no RAID") {
		t.Errorf("single disk: %q, warning %q", one.Describe(1<<30), one.Warning())
	}
	l5, _ := Plan("", []string{"a", "b", "c"}, 0)
	if l5.Warning() != "" || l5.Usable(10) != 20 {
		t.Errorf("raid5: warning %q usable %d", l5.Warning(), l5.Usable(10))
	}
}

func TestSchedule(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time {
		v, err := time.ParseInLocation("2006-01-02 15:04", s, paris)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tt := range []struct{ sched, after, want string }{
		{"", "2026-12-01 02:00", "2026-12-01 03:00"},
		{"", "2026-12-01 03:00", "2027-01-01 03:00"}, // strictly after
		{"monthly 15 22:30", "2026-12-20 10:00", "2027-01-15 22:30"},
		{"weekly sun 02:00", "2026-12-01 10:00", "2026-12-06 02:00"}, // a Tuesday
		{"weekly tue 02:00", "2026-12-01 10:00", "2026-12-08 02:00"},
		{"weekly tue 12:00", "2026-12-01 10:00", "2026-12-01 12:00"},
	} {
		s, err := ParseSchedule(tt.sched)
		if err != nil {
			t.Fatalf("%q: %v", tt.sched, err)
		}
		if got := s.Next(at(tt.after)); !got.Equal(at(tt.want)) {
			t.Errorf("%q after %s = %s, want %s", tt.sched, tt.after, got, tt.want)
		}
	}
	if s, err := ParseSchedule("never"); err != nil || !s.Next(time.Now()).IsZero() {
		t.Errorf("never: %+v %v", s, err)
	}
	for _, bad := range []string{"monthly 31 03:00", "daily 03:00", "weekly xyz 03:00", "monthly 1 25:00", "monthly 1"} {
		if _, err := ParseSchedule(bad); !errors.Is(err, ErrSchedule) {
			t.Errorf("%q accepted: %v", bad, err)
		}
	}
}

func TestParseSmartctl(t *testing.T) {
	for _, tt := range []struct {
		file, want string
		temp       int
	}{
		{"smart-ata-ok.json", "passed", 36},
		{"smart-ata-pending.json", "FAILING: Reallocated_Sector_Ct 24, Current_Pending_Sector 8", 41},
		{"smart-ata-failing.json", "FAILING: health self-assessment failed", 50},
		{"smart-nvme-ok.json", "passed", 33},
		{"smart-virtio.json", "unknown: /dev/vda: Unable to detect device type", 0}, // smartctl 7.3 on a virtio disk
		{"smart-sat-nocmd.json", "unknown: the disk does not answer SMART", 0},      // a file forced to -d sat
	} {
		b, err := os.ReadFile(filepath.Join("testdata", tt.file))
		if err != nil {
			t.Fatal(err)
		}
		s, err := ParseSmartctl(b)
		if err != nil || s.Verdict != tt.want || s.Temp != tt.temp {
			t.Errorf("%s: %+v, %v; want %q %d °C", tt.file, s, err, tt.want, tt.temp)
		}
	}
	for _, bad := range [][]byte{[]byte("Unable to detect device type"), make([]byte, maxSmartJSON+1)} {
		if _, err := ParseSmartctl(bad); !errors.Is(err, ErrSmartJSON) {
			t.Errorf("garbage accepted: %v", err)
		}
	}
}

// mdFixture writes a sysfs and procfs copy with one array.
type mdFixture struct {
	proc, sys string
}

func newMDFixture(t *testing.T, level, arrayState, action, completed string, raidDisks string, members map[string]string, mdstat string) mdFixture {
	t.Helper()
	root := t.TempDir()
	f := mdFixture{proc: filepath.Join(root, "proc"), sys: filepath.Join(root, "sys")}
	md := filepath.Join(f.sys, "block", "md0", "md")
	files := map[string]string{"level": level, "array_state": arrayState, "metadata_version": "1.2", "raid_disks": raidDisks,
		"uuid": "0a1b2c3d-0000-0000-0000-000000000000", "chunk_size": "524288", "degraded": "0", "sync_action": action,
		"sync_completed": completed, "mismatch_cnt": "0"}
	for name, v := range files {
		write(t, filepath.Join(md, name), v)
	}
	for dev, state := range members {
		write(t, filepath.Join(md, "dev-"+dev, "state"), state)
		write(t, filepath.Join(f.sys, "block", dev, "size"), "196608")
	}
	write(t, filepath.Join(f.proc, "mdstat"), mdstat)
	return f
}

func write(t *testing.T, p, v string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestArrayStates(t *testing.T) {
	clean := `Personalities : [raid6] [raid5] [raid4]
md0 : active raid6 vde[3] vdd[2] vdc[1] vdb[0]
      196608 blocks super 1.2 level 6, 512k chunk, algorithm 2 [4/4] [UUUU]

unused devices: <none>
`
	rebuilding := `Personalities : [raid6] [raid5] [raid4]
md0 : active raid6 vdf[4] vde[3] vdc[1] vdb[0]
      196608 blocks super 1.2 level 6, 512k chunk, algorithm 2 [4/3] [UU_U]
      [=====>...............]  recovery = 27.3% (26880/98304) finish=1.2min speed=1000K/sec

unused devices: <none>
`
	spare := `Personalities : [raid1]
md0 : active raid1 vdd[2](S) vdc[1] vdb[0]
      98304 blocks super 1.2 [2/2] [UU]

unused devices: <none>
`
	for _, tt := range []struct {
		name                            string
		level, arrayState, action, done string
		disks                           string
		members                         map[string]string
		mdstat                          string
		state                           string
		active, failed, spares          int
		progress                        float64
		detail                          string
	}{
		{"clean raid6", "raid6", "clean", "idle", "none", "4",
			map[string]string{"vdb": "in_sync", "vdc": "in_sync", "vdd": "in_sync", "vde": "in_sync"}, clean,
			sh.Clean, 4, 0, 0, 0, "array md0 (raid6) clean: 4 of 4 disks"},
		{"one gone from raid6", "raid6", "active", "idle", "none", "4",
			map[string]string{"vdb": "in_sync", "vdc": "in_sync", "vdd": "faulty", "vde": "in_sync"}, clean,
			sh.Degraded, 3, 1, 0, 0, "array md0 (raid6) is degraded: 3 of 4 disks in sync"},
		{"rebuilding raid6", "raid6", "active", "recover", "53760 / 196608", "4",
			map[string]string{"vdb": "in_sync", "vdc": "in_sync", "vdf": "spare", "vde": "in_sync"}, rebuilding,
			sh.Resyncing, 3, 0, 0, 0.2734375, "array md0 (raid6) rebuilding: 27.3 %, about 1m12s left; 3 of 4 disks in sync"},
		{"three lost of raid6", "raid6", "active", "idle", "none", "4",
			map[string]string{"vdb": "faulty", "vdc": "faulty", "vdd": "faulty", "vde": "in_sync"}, clean,
			sh.Failed, 1, 3, 0, 0, "array md0 (raid6) FAILED: 1 of 4 disks in sync"},
		{"raid5 two lost", "raid5", "active", "idle", "none", "3",
			map[string]string{"vdb": "in_sync", "vdc": "faulty", "vdd": "faulty"}, clean,
			sh.Failed, 1, 2, 0, 0, "FAILED"},
		{"mirror with a spare", "raid1", "clean", "idle", "none", "2",
			map[string]string{"vdb": "in_sync", "vdc": "in_sync", "vdd": "spare"}, spare,
			sh.Clean, 2, 0, 1, 0, "array md0 (raid1) clean: 2 of 2 disks, 1 hot spare(s)"},
		{"mirror on one disk", "raid1", "clean", "idle", "none", "2",
			map[string]string{"vdb": "in_sync"}, spare,
			sh.Degraded, 1, 0, 0, 0, "array md0 (raid1) is degraded: 1 of 2 disks"},
		{"inactive", "raid6", "inactive", "idle", "none", "4",
			map[string]string{"vdb": "in_sync"}, clean,
			sh.Failed, 1, 0, 0, 0, "FAILED"},
		{"scrubbing", "raid6", "clean", "check", "98304 / 196608", "4",
			map[string]string{"vdb": "in_sync", "vdc": "in_sync", "vdd": "in_sync", "vde": "in_sync"}, clean,
			sh.Clean, 4, 0, 0, 0.5, "scrub 50.0 %"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newMDFixture(t, tt.level, tt.arrayState, tt.action, tt.done, tt.disks, tt.members, tt.mdstat)
			arrays, err := readArrays(f.proc, f.sys)
			if err != nil || len(arrays) != 1 {
				t.Fatalf("readArrays: %v, %+v", err, arrays)
			}
			a := arrays[0]
			if a.State != tt.state || a.Active != tt.active || a.Failed != tt.failed || a.Spares != tt.spares || a.Progress != tt.progress {
				t.Errorf("got %s active %d failed %d spares %d progress %v; want %s %d %d %d %v",
					a.State, a.Active, a.Failed, a.Spares, a.Progress, tt.state, tt.active, tt.failed, tt.spares, tt.progress)
			}
			if d := describe(a); !strings.Contains(d, tt.detail) {
				t.Errorf("describe = %q, want it to contain %q", d, tt.detail)
			}
		})
	}
}

// TestReconcileSpareTakesOver: once md rebuilt onto a hot spare, the
// configuration names the spare in the lost member's place; not before.
func TestReconcileSpareTakesOver(t *testing.T) {
	var saved []config.Data
	c, err := New(Options{Log: zap.NewNop(), Clock: clock.NewFake(time.Unix(0, 0)), Save: func(d config.Data) error { saved = append(saved, d); return nil }},
		config.Data{Level: RAID6, Disks: []string{"d1", "d2", "d3", "d4"}, Spares: []string{"d5"}})
	if err != nil {
		t.Fatal(err)
	}
	a := sh.Array{Name: "md0", Action: "recover", Members: []sh.Member{
		{Device: "vdc", ID: "d2", State: "in_sync"}, {Device: "vdd", ID: "d3", State: "in_sync"},
		{Device: "vde", ID: "d4", State: "in_sync"}, {Device: "vdf", ID: "d5", State: "spare"}}}
	c.reconcile(a)
	if len(saved) != 0 {
		t.Fatalf("saved during the rebuild: %+v", saved)
	}
	a.Action, a.Members[3].State = "idle", "in_sync"
	c.reconcile(a)
	want := config.Data{Level: RAID6, Disks: []string{"d5", "d2", "d3", "d4"}}
	if len(saved) != 1 || !reflect.DeepEqual(saved[0], want) || !reflect.DeepEqual(c.Data(), want) {
		t.Fatalf("saved %+v, data %+v; want %+v", saved, c.Data(), want)
	}
	c.reconcile(a)
	if len(saved) != 1 {
		t.Errorf("saved again with nothing changed: %+v", saved)
	}
}

// TestSetSchedule: a valid schedule is saved in the configuration and
// takes effect; a bad one changes nothing.
func TestSetSchedule(t *testing.T) {
	var saved []config.Data
	start := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC) // a Tuesday
	c, err := New(Options{Log: zap.NewNop(), Clock: clock.NewFake(start), Save: func(d config.Data) error { saved = append(saved, d); return nil }},
		config.Data{Level: RAID5, Disks: []string{"d1", "d2", "d3"}})
	if err != nil {
		t.Fatal(err)
	}
	if s, next := c.Schedule(); s != DefaultScrub || !next.Equal(time.Date(2027, 1, 1, 3, 0, 0, 0, time.UTC)) {
		t.Errorf("default schedule %q next %s", s, next)
	}
	if err := c.SetSchedule("weekly  SUN 02:00"); err != nil {
		t.Fatal(err)
	}
	if s, next := c.Schedule(); s != "weekly sun 02:00" || !next.Equal(time.Date(2026, 12, 6, 2, 0, 0, 0, time.UTC)) {
		t.Errorf("schedule %q next %s", s, next)
	}
	if err := c.SetSchedule("hourly"); !errors.Is(err, ErrSchedule) {
		t.Errorf("hourly: %v", err)
	}
	if len(saved) != 1 || saved[0].Scrub != "weekly sun 02:00" {
		t.Errorf("saved %+v", saved)
	}
}

// recRunner records the commands it is asked to run; mdadm --examine of a
// disk named in former answers with this array's UUID.
type recRunner struct {
	calls  []string
	former map[string]bool
	uuid   string
}

func (r *recRunner) Output(_ context.Context, cmd *exec.Cmd) ([]byte, error) {
	line := strings.Join(cmd.Args, " ")
	r.calls = append(r.calls, line)
	if len(cmd.Args) == 4 && cmd.Args[1] == "--examine" && r.former[filepath.Base(cmd.Args[3])] {
		return []byte("MD_LEVEL=raid1\nMD_UUID=" + r.uuid + "\n"), nil
	}
	if len(cmd.Args) > 1 && cmd.Args[1] == "--examine" {
		return []byte("mdadm: No md superblock detected\n"), errors.New("exit status 1")
	}
	return nil, nil
}

// TestReplaceCandidates: a degraded mirror of 512 MiB members offers a
// blank disk at least as large and a former member (holding data), never
// a 256 MiB disk; replacing onto the small disk is refused before mdadm
// runs, onto the former member only with the erase confirmation.
func TestReplaceCandidates(t *testing.T) {
	const uuid = "0a1b2c3d:00000000:00000000:00000000"
	mdstat := `Personalities : [raid1]
md0 : active raid1 vdb[0]
      522240 blocks super 1.2 [2/1] [U_]

unused devices: <none>
`
	f := newMDFixture(t, "raid1", "clean", "idle", "none", "2", map[string]string{"vdb": "in_sync"}, mdstat)
	write(t, filepath.Join(f.sys, "block", "md0", "md", "component_size"), "522240") // KiB per member: 510 MiB
	write(t, filepath.Join(f.sys, "block", "md0", "md", "dev-vdb", "size"), "522240")
	write(t, filepath.Join(f.sys, "block", "md0", "md", "dev-vdb", "offset"), "4096") // sectors
	disks := []disk.Disk{
		{Name: "vda", ID: "system", Size: 1 << 30},
		{Name: "vdb", ID: "d1", Size: 512 << 20},
		{Name: "vdc", ID: "small", Size: 256 << 20, Blank: true},
		{Name: "vdd", ID: "big", Size: 1 << 30, Blank: true},
		{Name: "vde", ID: "d2", Size: 512 << 20},  // the mirror's other half, dropped out
		{Name: "vdf", ID: "other", Size: 1 << 30}, // holds a filesystem
	}
	run := &recRunner{former: map[string]bool{"vde": true}, uuid: uuid}
	var saved []config.Data
	c, err := New(Options{Log: zap.NewNop(), Clock: clock.NewFake(time.Unix(0, 0)), Run: run, Mdadm: "mdadm", MD: "/dev/md0",
		Proc: f.proc, Sys: f.sys, SystemDisk: "vda", List: func() ([]disk.Disk, error) { return disks, nil },
		Save: func(d config.Data) error { saved = append(saved, d); return nil }},
		config.Data{Level: RAID1, Disks: []string{"d1", "d2"}, ArrayUUID: uuid})
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Poll(context.Background()); r.State != sh.Degraded {
		t.Fatalf("state %s: %s", r.State, r.Detail)
	}
	want := []Candidate{{Name: "vdd", ID: "big", Size: 1 << 30}, {Name: "vde", ID: "d2", Size: 512 << 20, HoldsData: true}}
	if got := c.CandidateDisks(); !reflect.DeepEqual(got, want) {
		t.Errorf("candidates %+v, want %+v", got, want)
	}
	mdadmAdds := func() int {
		n := 0
		for _, l := range run.calls {
			if strings.Contains(l, "--add") {
				n++
			}
		}
		return n
	}
	for _, tt := range []struct {
		disk string
		want error
	}{
		{"vdc", ErrTooSmall},
		{"vde", ErrNeedsErase},
		{"vdf", ErrNeedsErase},
	} {
		if _, err := c.Replace(context.Background(), tt.disk, false); !errors.Is(err, tt.want) {
			t.Errorf("replace %s: %v, want %v", tt.disk, err, tt.want)
		}
	}
	if _, err := c.Replace(context.Background(), "vdc", true); !errors.Is(err, ErrTooSmall) || !strings.Contains(err.Error(), "at least") {
		t.Errorf("replace the small disk with erase: %v", err)
	}
	if n := mdadmAdds(); n != 0 || len(saved) != 0 {
		t.Fatalf("mdadm --add ran %d times, config saved %+v, for refused disks: %q", n, saved, run.calls)
	}
	msg, err := c.Replace(context.Background(), "vdd", false)
	if err != nil || mdadmAdds() != 1 || !strings.Contains(msg, "replaces d2") {
		t.Fatalf("replace the blank disk: %q, %v; calls %q", msg, err, run.calls)
	}
	if len(saved) != 1 || !reflect.DeepEqual(saved[0].Disks, []string{"d1", "big"}) {
		t.Errorf("saved %+v", saved)
	}
}

// dirtyRunner refuses the first assembly as mdadm does a dirty degraded
// array, and checks that the second runs with start_dirty_degraded set.
type dirtyRunner struct {
	param string
	calls []string
	set   []string // the parameter's value at each assembly
}

func (r *dirtyRunner) Output(_ context.Context, cmd *exec.Cmd) ([]byte, error) {
	r.calls = append(r.calls, strings.Join(cmd.Args[1:], " "))
	if cmd.Args[1] == "--assemble" {
		v, _ := os.ReadFile(r.param)
		r.set = append(r.set, strings.TrimSpace(string(v)))
		if strings.TrimSpace(string(v)) != "1" {
			return []byte("mdadm: /dev/md0 assembled from 3 drives - not enough to start the array while not clean - consider --force.\n"), errors.New("exit status 1")
		}
	}
	return nil, nil
}

// TestStartDirtyDegraded: an array left dirty and degraded by a power cut
// during a rebuild starts (md's start_dirty_degraded for that one start,
// then back to 0), and the operator is told to verify.
func TestStartDirtyDegraded(t *testing.T) {
	const uuid = "0a1b2c3d:00000000:00000000:00000000"
	sys := t.TempDir()
	param := filepath.Join(sys, "module", "md_mod", "parameters", "start_dirty_degraded")
	write(t, param, "0")
	run := &dirtyRunner{param: param}
	c, err := New(Options{Log: zap.NewNop(), Clock: clock.NewFake(time.Unix(0, 0)), Run: run, Mdadm: "mdadm", MD: "/dev/md0",
		Proc: t.TempDir(), Sys: sys, SystemDisk: "vda"},
		config.Data{Level: RAID6, Disks: []string{"d1", "d2", "d3", "d4"}, ArrayUUID: uuid})
	if err != nil {
		t.Fatal(err)
	}
	disks := []disk.Disk{{Name: "vda", ID: "system"}, {Name: "vdb", ID: "d1"}, {Name: "vdc", ID: "d2"}, {Name: "vdd", ID: "d3"}, {Name: "vde", ID: "d5"}}
	problems, err := c.Start(context.Background(), disks)
	if err != nil {
		t.Fatalf("start: %v (calls %q)", err, run.calls)
	}
	if len(run.set) != 2 || run.set[0] != "0" || run.set[1] != "1" {
		t.Errorf("start_dirty_degraded at the assemblies: %q, want 0 then 1", run.set)
	}
	if v, _ := os.ReadFile(param); strings.TrimSpace(string(v)) != "0" {
		t.Errorf("start_dirty_degraded left at %q", v)
	}
	if !slices.Contains(run.calls, "--stop /dev/md0") {
		t.Errorf("the refused assembly was not stopped first: %q", run.calls)
	}
	if !strings.Contains(strings.Join(problems, "\n"), "vaultctl verify") {
		t.Errorf("problems %q do not ask for a verify", problems)
	}
	if c.Device() != "/dev/md0" {
		t.Errorf("device %q", c.Device())
	}
}
