// Package raid is the appliance's array controller: it chooses the data
// volume's layout from the disk count at first boot, creates the md array
// (Debian's mdadm, metadata 1.2), assembles it by its UUID at every boot
// whatever the kernel's device order, watches it through
// github.com/prometheus/procfs (/proc/mdstat and /sys/block/md*/md) and
// reacts to a failed or vanished member, rebuilds onto a blank disk the
// operator confirms, runs the scheduled md check (scrub), sets md's sync
// speed limits, reads SMART through smartctl when the image has it, and
// publishes the storage's state for the console, /health, /metrics and
// the vault (internal/storagehealth).
package raid

import (
	"errors"
	"fmt"
	"strings"
)

// Levels of the data volume.
const (
	Single = "single" // ext4 on one disk, no redundancy
	RAID1  = "raid1"
	RAID5  = "raid5"
	RAID6  = "raid6"
	RAID10 = "raid10"
)

// ErrLayout means a layout cannot be built from the disks named.
var ErrLayout = errors.New("layout not possible")

// minDisks is the fewest active members of each level.
var minDisks = map[string]int{Single: 1, RAID1: 2, RAID5: 3, RAID6: 4, RAID10: 4}

// Tolerance is how many members a level can lose and still serve data.
// RAID10 is counted at its worst case (both halves of one mirror pair).
func Tolerance(level string, members int) int {
	switch level {
	case RAID1:
		return members - 1
	case RAID5, RAID10:
		return 1
	case RAID6:
		return 2
	}
	return 0
}

// DefaultLevel is the level for n active disks: one disk ext4, two RAID1,
// three RAID5, four or more RAID6.
func DefaultLevel(n int) string {
	switch {
	case n <= 1:
		return Single
	case n == 2:
		return RAID1
	case n == 3:
		return RAID5
	}
	return RAID6
}

// Levels are the levels offered for n active disks, the default first.
func Levels(n int) []string {
	out := []string{DefaultLevel(n)}
	if n >= 4 && n%2 == 0 {
		out = append(out, RAID10)
	}
	return out
}

// Layout is a planned data volume.
type Layout struct {
	Level  string
	Disks  []string // active members (stable IDs)
	Spares []string // hot spares
}

// Plan checks a layout: level (empty: the default for the active disks) over
// disks, the last spares of them kept as hot spares.
func Plan(level string, disks []string, spares int) (Layout, error) {
	if spares < 0 || spares >= len(disks) {
		return Layout{}, fmt.Errorf("%w: %d spare(s) of %d disk(s): keep at least one active disk", ErrLayout, spares, len(disks))
	}
	active := len(disks) - spares
	if level == "" {
		level = DefaultLevel(active)
	}
	min, ok := minDisks[level]
	switch {
	case !ok:
		return Layout{}, fmt.Errorf("%w: unknown level %q: use %s", ErrLayout, level, strings.Join(Levels(active), " or "))
	case active < min:
		return Layout{}, fmt.Errorf("%w: %s needs at least %d active disks, %d given", ErrLayout, level, min, active)
	case level == Single && active != 1:
		return Layout{}, fmt.Errorf("%w: single is one disk; %d disks make %s", ErrLayout, active, DefaultLevel(active))
	case level == RAID10 && active%2 != 0:
		return Layout{}, fmt.Errorf("%w: raid10 needs an even number of active disks, %d given", ErrLayout, active)
	case level == Single && spares > 0:
		return Layout{}, fmt.Errorf("%w: a single disk cannot have hot spares: use two disks for a mirror", ErrLayout)
	}
	l := Layout{Level: level, Disks: append([]string(nil), disks[:active]...)}
	if spares > 0 {
		l.Spares = append([]string(nil), disks[active:]...)
	}
	return l, nil
}

// Usable is the data volume's size for member disks of size bytes each
// (the smallest member counts).
func (l Layout) Usable(size int64) int64 {
	n := int64(len(l.Disks))
	switch l.Level {
	case RAID1:
		return size
	case RAID5:
		return (n - 1) * size
	case RAID6:
		return (n - 2) * size
	case RAID10:
		return n / 2 * size
	}
	return size
}

// Describe is the layout in one operator sentence, shown before anything
// is written.
func (l Layout) Describe(size int64) string {
	var b strings.Builder
	switch l.Level {
	case Single:
		fmt.Fprintf(&b, "ext4 on one disk, no RAID: %d MiB", l.Usable(size)>>20)
	default:
		fmt.Fprintf(&b, "%s over %d disks: %d MiB usable, survives the loss of %s", strings.ToUpper(l.Level), len(l.Disks),
			l.Usable(size)>>20, plural(Tolerance(l.Level, len(l.Disks)), "disk"))
		if l.Level == RAID10 {
			b.WriteString(" (more if they are in different pairs)")
		}
	}
	if len(l.Spares) > 0 {
		fmt.Fprintf(&b, ", %s (%s) rebuilding by itself", plural(len(l.Spares), "hot spare"), strings.Join(l.Spares, " "))
	}
	return b.String()
}

// Warning is what the operator must read before choosing l, or "".
func (l Layout) Warning() string {
	if l.Level == Single {
		return "One disk has no redundancy: when it fails, every backup on it is lost. Add a second disk for a mirror."
	}
	return ""
}

func plural(n int, s string) string {
	if n == 1 {
		return "1 " + s
	}
	return fmt.Sprintf("%d %ss", n, s)
}
