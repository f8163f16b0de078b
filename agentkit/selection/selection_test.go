package selection

import "testing"

func TestPatterns(t *testing.T) {
	s, err := New(Options{
		Include:   []string{"*.go", "/srv/keep/**"},
		Exclude:   []string{"*.tmp", "node_modules", "/home/*/.cache", "/var/**/*.log"},
		StatePath: "/var/lib/vault-agent",
	})
	if err != nil {
		t.Fatal(err)
	}
	excluded := []struct {
		path string
		want bool
	}{
		{"/home/ann/notes.tmp", true},       // a pattern without '/' matches a name at any depth
		{"/home/ann/tmp", false},            // ... the whole name, not a part
		{"/srv/app/node_modules", true},     // a directory name anywhere
		{"/home/ann/.cache", true},          // an anchored pattern
		{"/home/ann/work/.cache", false},    // ... only where it says
		{"/var/log/nginx/access.log", true}, // ** spans directories
		{"/var/log/nginx/access.log.1", false},
		{"/var/lib/vault-agent", true}, // the agent's own state
		{"/proc", true},                // pseudo filesystems
		{"/sys", true},
		{"/srv/data", false},
	}
	for _, c := range excluded {
		if got, why := s.Excluded(c.path); got != c.want {
			t.Errorf("Excluded(%q) = %v (%s), want %v", c.path, got, why, c.want)
		}
	}
	included := []struct {
		path     string
		ancestor bool
		want     bool
	}{
		{"/src/main.go", false, true},
		{"/src/README", false, false},
		{"/srv/keep/a/b/c.bin", false, true},
		{"/srv/other/c.bin", false, false},
		{"/srv/other/c.bin", true, true}, // under an included directory
	}
	for _, c := range included {
		if got := s.Included(c.path, c.ancestor); got != c.want {
			t.Errorf("Included(%q, %v) = %v, want %v", c.path, c.ancestor, got, c.want)
		}
	}
}

func TestNoAuto(t *testing.T) {
	s, err := New(Options{NoAuto: true})
	if err != nil {
		t.Fatal(err)
	}
	if ex, _ := s.Excluded("/proc"); ex {
		t.Fatal("/proc excluded with automatic exclusions turned off")
	}
	if !s.Included("/anything", false) {
		t.Fatal("without include patterns everything is selected")
	}
}

func TestBadPattern(t *testing.T) {
	if _, err := New(Options{Exclude: []string{"[unclosed"}}); err == nil {
		t.Fatal("a malformed pattern was accepted")
	}
}

func TestExcludedPathChecksAncestors(t *testing.T) {
	s, err := New(Options{Exclude: []string{"node_modules"}, StatePath: "/var/lib/agent"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/srv/app/node_modules/x/y.js", "/var/lib/agent/configs/pending.journal", "/proc/1/status"} {
		if ex, _ := s.ExcludedPath(p); !ex {
			t.Errorf("ExcludedPath(%q) = false, want true (an ancestor is excluded)", p)
		}
	}
	if ex, why := s.ExcludedPath("/srv/app/src/main.go"); ex {
		t.Errorf("ExcludedPath of a selected file = true (%s)", why)
	}
}
