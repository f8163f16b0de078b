package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// goTestJSON runs the real `go test -json` on a small module whose tests
// pass, fail, skip, panic and fail to build, and returns its output.
func goTestJSON(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module example\n\ngo 1.22\n",
		"a/a_test.go": `package a
import "testing"
func TestPass(t *testing.T) {}
func TestFail(t *testing.T) { t.Log("the detail a reader needs"); t.Fatal("boom") }
func TestSkipAllowed(t *testing.T) { t.Skip("SKIPPED LOUDLY: no btrfs here") }
func TestSkipUnlisted(t *testing.T) { t.Skip("SKIPPED LOUDLY: needs root") }
func TestSub(t *testing.T) {
	t.Run("one", func(t *testing.T) {})
	t.Run("two", func(t *testing.T) { t.Skipf("no %s", "xattrs") })
}
`,
		"b/b_test.go": `package b
import "testing"
func TestPanics(t *testing.T) { panic("kaboom") }
`,
		"c/c_test.go": `package c
import "testing"
func TestBroken(t *testing.T) { undefinedName() }
`,
		"e/e_test.go": `package e
import "testing"
func TestOnlySkips(t *testing.T) { t.Skip("needs a disk") }
`,
		"d/d_test.go": `package d
import "testing"
func TestQuiet(t *testing.T) {}
`,
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-count=1", "-json", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run go test: %v", err)
	}
	if err == nil {
		t.Fatalf("go test passed on a module with failing tests:\n%s", out)
	}
	return out
}

func TestReport(t *testing.T) {
	stream := goTestJSON(t)
	allow := filepath.Join(t.TempDir(), "allow")
	if err := os.WriteFile(allow, []byte("# comment\nexample/a TestSkipAllowed  the temp dir may be on btrfs\nexample/a TestSub/two no user xattrs on tmpfs\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		ci   string
		last string
		want []string
	}{
		{ci: "", last: "4 passed, 3 failed, 4 skipped", want: []string{
			"SKIP example/a TestSkipUnlisted: a_test.go:6: SKIPPED LOUDLY: needs root\n",
			"ok  \texample/e\t",
		}},
		{ci: "true", last: "4 passed, 5 failed, 2 skipped", want: []string{
			"SKIP example/a TestSkipUnlisted: a_test.go:6: SKIPPED LOUDLY: needs root [NOT ALLOWED IN CI",
			"--- FAIL: TestOnlySkips skipped in CI: e_test.go:3: needs a disk\n",
			"FAIL\texample/e\t",
		}},
	} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			var out bytes.Buffer
			err := run([]string{"-allow", allow}, bytes.NewReader(stream), &out, tc.ci)
			if !errors.Is(err, errFailed) {
				t.Errorf("run: %v, want errFailed", err)
			}
			got := out.String()
			lines := strings.Split(strings.TrimRight(got, "\n"), "\n")
			if l := lines[len(lines)-1]; l != tc.last {
				t.Errorf("closing line %q, want %q", l, tc.last)
			}
			want := append([]string{
				"a_test.go:4: the detail a reader needs",
				"a_test.go:4: boom",
				"--- FAIL: TestFail",
				"FAIL\texample/a\t",
				"panic: kaboom",
				"FAIL\texample/b\t",
				"undefinedName",
				"FAIL\texample/c [build failed]",
				"ok  \texample/d\t",
				"SKIP example/a TestSkipAllowed: a_test.go:5: SKIPPED LOUDLY: no btrfs here [allowed: the temp dir may be on btrfs]",
				"SKIP example/a TestSub/two: a_test.go:9: no xattrs [allowed: no user xattrs on tmpfs]",
			}, tc.want...)
			for _, w := range want {
				if !strings.Contains(got, w) {
					t.Errorf("report lacks %q", w)
				}
			}
			for _, unwanted := range []string{"=== RUN", "TestPass", "--- PASS"} {
				if strings.Contains(got, unwanted) {
					t.Errorf("report shows %q; only failures and skips belong in it", unwanted)
				}
			}
			if t.Failed() {
				t.Logf("report:\n%s", got)
			}
		})
	}
}

func TestReportAllPass(t *testing.T) {
	stream := `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"p","Test":"TestA","Elapsed":0}
{"Action":"pass","Package":"p","Elapsed":0.1}
`
	var out bytes.Buffer
	if err := run(nil, strings.NewReader(stream), &out, "true"); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if want := "ok  \tp\t0.100s\n\n1 passed, 0 failed, 0 skipped\n"; out.String() != want {
		t.Errorf("report %q, want %q", out.String(), want)
	}
}

// A stream cut short (go test killed) leaves running tests: they failed.
func TestReportTruncated(t *testing.T) {
	stream := `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"    a_test.go:3: halfway\n"}
`
	var out bytes.Buffer
	if err := run(nil, strings.NewReader(stream), &out, ""); !errors.Is(err, errFailed) {
		t.Fatalf("run: %v, want errFailed\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "halfway") || !strings.HasSuffix(out.String(), "0 passed, 1 failed, 0 skipped\n") {
		t.Errorf("report:\n%s", out.String())
	}
}

func TestParseAllowList(t *testing.T) {
	if _, err := parseAllowList("pkg TestOnlyTwoFields\n"); err == nil {
		t.Error("an entry without a reason was accepted")
	}
}
