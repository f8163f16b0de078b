package wire_test

import (
	"encoding/json"
	"strings"
	"testing"

	"vaultnode/internal/wire"
)

// FuzzCheckCommand: any JSON decoded as a command is accepted or refused
// with an error, never a panic; an accepted one has exactly its kind's
// arguments and clean, bounded paths.
func FuzzCheckCommand(f *testing.F) {
	for _, s := range []string{`{"kind":"browse","browse":{"path":"/etc"}}`, `{"kind":"browse","browse":{"path":""}}`,
		`{"kind":"restore","restore":{"config":"home","paths":["/a","/b"],"to":"/tmp/x","existing":"overwrite"}}`,
		`{"kind":"compare","compare":{"config":"c","path":"/x/../y"}}`, `{"kind":"config_changed"}`, `{"kind":"backup","backup":{}}`,
		`{"kind":"backup","backup":{"config":"c"},"browse":{"path":"/"}}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var c wire.AgentCommand
		if json.Unmarshal([]byte(s), &c) != nil {
			return
		}
		if wire.CheckCommand(&c) != nil {
			return
		}
		paths := []string{}
		switch c.Kind {
		case wire.CmdBrowse:
			paths = append(paths, c.Browse.Path)
		case wire.CmdRestore:
			paths = append(append(paths, c.Restore.Paths...), c.Restore.To)
		case wire.CmdCompare:
			paths = append(paths, c.Compare.Path)
		}
		for _, p := range paths {
			if p != "" && (!strings.HasPrefix(p, "/") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") || len(p) > wire.MaxCommandText) {
				t.Fatalf("accepted %q with path %q", s, p)
			}
		}
	})
}

// TestCheckCommand: each kind with its own arguments only.
func TestCheckCommand(t *testing.T) {
	for s, ok := range map[string]bool{
		`{"kind":"browse","browse":{"path":"/etc"}}`:                           true,
		`{"kind":"browse","browse":{"path":"etc"}}`:                            false,
		`{"kind":"browse","browse":{"path":"/etc/"}}`:                          false,
		`{"kind":"backup","backup":{"config":"c"},"browse":{"path":"/"}}`:      false,
		`{"kind":"config_changed","backup":{"config":"c"}}`:                    false,
		`{"kind":"restore","restore":{"config":"c","existing":"clobber"}}`:     false,
		`{"kind":"restore","restore":{"config":"c","paths":["/a"],"to":"/b"}}`: true,
		`{"kind":"format_disk"}`:                                               false,
	} {
		var c wire.AgentCommand
		if err := json.Unmarshal([]byte(s), &c); err != nil {
			t.Fatal(err)
		}
		if err := wire.CheckCommand(&c); (err == nil) != ok {
			t.Errorf("%s: %v, want ok %v", s, err, ok)
		}
	}
}
