// Command testreport reads `go test -json` on stdin and prints what a reader
// of CI's log needs: one ok/FAIL line per package as go test prints them, the
// full output of every failed test, a list of every skipped test with its
// reason, and a closing line "N passed, N failed, N skipped".
//
// With CI set (and not "false" or "0"), a skip that is not on the allow-list
// counts as a failure: a test CI is meant to run must run there. The
// allow-list (-allow) names each test that may legitimately skip, with the
// reason, one per line:
//
//	vaultnode/agentkit/snapshot TestOtherFilesystemIsAnError  the temp dir is on btrfs
//
// `make test` pipes go test through it; the exit status is 1 when anything
// failed.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout, os.Getenv("CI")); err != nil {
		if !errors.Is(err, errFailed) {
			fmt.Fprintln(os.Stderr, "testreport:", err)
		}
		os.Exit(1)
	}
}

var errFailed = errors.New("tests failed")

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	Elapsed     float64
	ImportPath  string // build-output and build-fail
	FailedBuild string
}

type testKey struct{ pkg, test string }

type testState struct {
	output []string
	done   bool
}

// report accumulates the stream and prints as packages finish.
type report struct {
	out     io.Writer
	ci      bool
	allowed map[testKey]string

	tests    map[testKey]*testState
	pkgOut   map[string][]string // package-level output (TestMain, panics, timeouts)
	buildOut map[string][]string // compiler output by import path
	passed   int
	failed   int
	skips    []skip
	failPkgs []string
	pkgFails map[string]int // failed tests by package
}

type skip struct {
	key     testKey
	reason  string
	allowed string // the allow-list's reason, "" when not listed
}

func run(args []string, in io.Reader, out io.Writer, ciEnv string) error {
	fs := flag.NewFlagSet("testreport", flag.ContinueOnError)
	allowPath := fs.String("allow", "", "file of tests allowed to skip in CI: `PACKAGE TEST REASON` per line")
	if err := fs.Parse(args); err != nil {
		return err
	}
	r := &report{
		out:      out,
		ci:       ciEnv != "" && ciEnv != "false" && ciEnv != "0",
		allowed:  map[testKey]string{},
		tests:    map[testKey]*testState{},
		pkgOut:   map[string][]string{},
		buildOut: map[string][]string{},
		pkgFails: map[string]int{},
	}
	if *allowPath != "" {
		b, err := os.ReadFile(*allowPath)
		if err != nil {
			return fmt.Errorf("read allow-list: %w", err)
		}
		if r.allowed, err = parseAllowList(string(b)); err != nil {
			return fmt.Errorf("parse allow-list %s: %w", *allowPath, err)
		}
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			// go test prints some things outside the JSON stream
			// (downloads, vet or setup failures): pass them through.
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		r.handle(ev)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read go test output: %w", err)
	}
	return r.finish()
}

// parseAllowList reads "PACKAGE TEST REASON..." lines; '#' starts a comment.
func parseAllowList(s string) (map[testKey]string, error) {
	m := map[testKey]string{}
	for i, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			return nil, fmt.Errorf("line %d: want PACKAGE TEST REASON, got %q", i+1, line)
		}
		m[testKey{f[0], f[1]}] = strings.Join(f[2:], " ")
	}
	return m, nil
}

func (r *report) handle(ev event) {
	switch ev.Action {
	case "build-output":
		r.buildOut[ev.ImportPath] = append(r.buildOut[ev.ImportPath], ev.Output)
		return
	case "build-fail":
		return // the package's fail event follows and prints the output
	}
	if ev.Test == "" {
		r.handlePackage(ev)
		return
	}
	k := testKey{ev.Package, ev.Test}
	st := r.tests[k]
	if st == nil {
		st = &testState{}
		r.tests[k] = st
	}
	switch ev.Action {
	case "output":
		st.output = append(st.output, ev.Output)
	case "pass":
		st.done = true
		st.output = nil
		r.passed++
	case "fail":
		st.done = true
		r.failed++
		r.pkgFails[ev.Package]++
		r.printLines(st.output)
		st.output = nil
	case "skip":
		st.done = true
		s := skip{key: k, reason: skipReason(st.output)}
		s.allowed = r.allowed[k]
		r.skips = append(r.skips, s)
		st.output = nil
		if r.ci && s.allowed == "" {
			// Fails the test and its package (printed FAIL, not ok).
			r.failed++
			r.pkgFails[ev.Package]++
			fmt.Fprintf(r.out, "--- FAIL: %s skipped in CI: %s\n", ev.Test, s.reason)
		}
	}
}

func (r *report) handlePackage(ev event) {
	switch ev.Action {
	case "output":
		r.pkgOut[ev.Package] = append(r.pkgOut[ev.Package], ev.Output)
		return
	case "pass", "skip", "fail":
	default:
		return
	}
	pkgOut := r.pkgOut[ev.Package]
	delete(r.pkgOut, ev.Package)
	// Tests still running when the package ended died with it (panic,
	// timeout, os.Exit): they failed, and their output says where.
	var unfinished []testKey
	for k, st := range r.tests {
		if k.pkg == ev.Package && !st.done {
			unfinished = append(unfinished, k)
		}
	}
	sort.Slice(unfinished, func(i, j int) bool { return unfinished[i].test < unfinished[j].test })
	for _, k := range unfinished {
		r.failed++
		r.pkgFails[ev.Package]++
		r.printLines(r.tests[k].output)
		fmt.Fprintf(r.out, "--- FAIL: %s (did not finish)\n", k.test)
	}
	for k := range r.tests {
		if k.pkg == ev.Package {
			delete(r.tests, k)
		}
	}
	action := ev.Action
	if action == "pass" && r.pkgFails[ev.Package] > 0 {
		action = "fail" // a skip CI does not allow
	}
	switch action {
	case "pass":
		fmt.Fprintf(r.out, "ok  \t%s\t%.3fs\n", ev.Package, ev.Elapsed)
	case "skip":
		fmt.Fprintf(r.out, "?   \t%s\t[no test files]\n", ev.Package)
	case "fail":
		if ev.FailedBuild != "" {
			r.printLines(r.buildOut[ev.FailedBuild])
			fmt.Fprintf(r.out, "FAIL\t%s [build failed]\n", ev.Package)
		} else {
			// The package's own output holds TestMain's errors, the
			// panic trace or the timeout report; go test's summary
			// lines ("FAIL", "exit status 1") are left out.
			var keep []string
			for _, l := range pkgOut {
				t := strings.TrimSpace(l)
				if t == "FAIL" || t == "PASS" || strings.HasPrefix(t, "FAIL\t"+ev.Package) || strings.HasPrefix(t, "ok  \t"+ev.Package) {
					continue
				}
				keep = append(keep, l)
			}
			r.printLines(keep)
			fmt.Fprintf(r.out, "FAIL\t%s\t%.3fs\n", ev.Package, ev.Elapsed)
		}
		r.failPkgs = append(r.failPkgs, ev.Package)
		if r.pkgFails[ev.Package] == 0 {
			// A build failure or a failing TestMain fails no test:
			// it still counts, so the closing line cannot read 0.
			r.failed++
		}
	}
	delete(r.pkgFails, ev.Package)
}

// skipReason is what the test logged, without go test's framing lines.
func skipReason(output []string) string {
	var parts []string
	for _, l := range output {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		parts = append(parts, t)
	}
	if len(parts) == 0 {
		return "(no reason given)"
	}
	return strings.Join(parts, " / ")
}

func (r *report) printLines(lines []string) {
	for _, l := range lines {
		if strings.HasPrefix(l, "=== ") {
			continue // RUN, PAUSE, CONT, NAME: -v framing
		}
		io.WriteString(r.out, l)
		if !strings.HasSuffix(l, "\n") {
			io.WriteString(r.out, "\n")
		}
	}
}

func (r *report) finish() error {
	// A stream that ends with packages unfinished (go test was killed)
	// leaves tests behind: they failed.
	var left []testKey
	for k, st := range r.tests {
		if !st.done {
			left = append(left, k)
		}
	}
	sort.Slice(left, func(i, j int) bool {
		if left[i].pkg != left[j].pkg {
			return left[i].pkg < left[j].pkg
		}
		return left[i].test < left[j].test
	})
	for _, k := range left {
		r.failed++
		r.printLines(r.tests[k].output)
		fmt.Fprintf(r.out, "--- FAIL: %s %s (output ended before it finished)\n", k.pkg, k.test)
	}

	skipped := 0
	if len(r.skips) > 0 {
		fmt.Fprintf(r.out, "\nSKIPPED (%d):\n", len(r.skips))
		for _, s := range r.skips {
			verdict := ""
			switch {
			case s.allowed != "":
				verdict = " [allowed: " + s.allowed + "]"
			case r.ci:
				verdict = " [NOT ALLOWED IN CI: fix the machine (.ci/run) or add it to the allow-list with a reason]"
			}
			fmt.Fprintf(r.out, "  SKIP %s %s: %s%s\n", s.key.pkg, s.key.test, s.reason, verdict)
			if !r.ci || s.allowed != "" {
				skipped++ // the others counted as failed when they skipped
			}
		}
	}
	if len(r.failPkgs) > 0 {
		fmt.Fprintf(r.out, "\nFAILED PACKAGES: %s\n", strings.Join(r.failPkgs, " "))
	}
	fmt.Fprintf(r.out, "\n%d passed, %d failed, %d skipped\n", r.passed, r.failed, skipped)
	if r.failed > 0 || len(r.failPkgs) > 0 {
		return errFailed
	}
	return nil
}
