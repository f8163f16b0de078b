package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"vaultnode/agentkit/backup"
	"vaultnode/agentkit/bwlimit"
	"vaultnode/agentkit/client"
	"vaultnode/agentkit/daemon"
	"vaultnode/agentkit/meta"
	"vaultnode/agentkit/progress"
	"vaultnode/agentkit/restore"
	"vaultnode/agentkit/state"
	"vaultnode/agentkit/sysstate"
	"vaultnode/internal/bandwidth"
	"vaultnode/internal/clock"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

const usage = `Usage: vault-agent [-state DIR] [-v] COMMAND [ARGS]

Commands:
  enroll -vault HOST:PORT -token TOKEN [-name NAME]   register this computer with a vault
  config set NAME -path DIR [-path DIR...] [-include GLOB...] [-exclude GLOB...] [-cross-mounts] [-no-auto-exclude]
  config set NAME ... [-snapshot btrfs]               read the paths from a read-only btrfs snapshot (open files)
  config set NAME -command CMD [-pre CMD] [-post CMD]   a database or application: CMD's output is the dump
      timing flags of config set: -mode scheduled|continuous  -schedule "24x7" | "tz=Europe/Paris; mon-fri 22:00-06:00 complete"
                                  -interval 1h (scheduled: time between synchronizations; continuous: between checkpoints)
  config set NAME -system                             system state: /etc, crontabs, bootloader, reports of
                                                      packages and disks (restored under vaultnode-system-report)
  config list                                         show this computer's configurations
  config delete NAME                                  remove a configuration (its versions stay)
  backup [-json] [CONFIG...]                          synchronize configurations now, in this process (all if none given)
  run [-poll 30s] [-browse DIRS] [-no-commands]       the agent daemon: keep every configuration protected by its mode and
                                                      schedule; follows changes made on the vault; stop with SIGTERM
  now [CONFIG]                                        ask the running daemon to synchronize now, even outside the schedule
  limit [PROFILE]                                     show or set this computer's upload limit, e.g.
                                                      "mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited" ("" = unlimited)
  versions [CONFIG]                                   list committed versions
  ls [-json] CONFIG@VERSION [PATH]                     list what a version holds; VERSION is a number (that version),
                                                      latest (with continuous-mode journal records) or a time
                                                      ("2026-11-24 15:05:00" local, or RFC 3339): the state as of then
  restore CONFIG@VERSION[:PATH] [-to DIR] [-dry-run] [-existing skip|overwrite|keep-both] [-by-name]
          [-devices] [-setid]                         restore a version, a directory or a file; without -to,
                                                      to the original place; as root, -devices recreates
                                                      device nodes and -setid keeps set-id bits
  dump CONFIG@VERSION:PATH                            write one file of a version to standard output
                                                      (a database dump: CONFIG@latest:CONFIG.dump)
  diff CONFIG@VERSION DIR                             compare a version with a directory: where the version
                                                      was restored, / (the original places), or a root's
                                                      own original directory (diff docs@1 /usr/share/doc)

Patterns (-include, -exclude) are globs: a pattern without '/' matches a name at
any depth ("*.tmp"), one with '/' an absolute path ("/home/*/.cache", "/var/**/*.log").
Automatic exclusions: /proc /sys /dev /run, pseudo filesystems, swap files, the
agent's state directory and any vault data directory. Other filesystems mounted
inside a path are recorded as mount points and not entered unless -cross-mounts.

Exit status: 0 success; 1 failure (nothing committed or restored); 2 usage error;
3 done but incomplete (some files could not be backed up or restored: listed).
`

type app struct {
	stdout, stderr io.Writer
	st             *state.Dir
	log            *zap.Logger
	prog           *progress.Line
	verbose        bool
	lim            *bwlimit.Limiter
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vault-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state", "var/agent", "state `directory` (identity and caches)")
	verbose := fs.Bool("v", false, "log details to stderr")
	fs.Usage = func() { fmt.Fprint(stderr, usage, "\nGlobal flags:\n"); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return flag.ErrHelp
	}
	st, err := state.Open(*stateDir)
	if err != nil {
		return err
	}
	lvl := zapcore.WarnLevel
	if *verbose {
		lvl = zapcore.DebugLevel
	}
	enc := zap.NewDevelopmentEncoderConfig()
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(stderr), lvl))
	a := &app{stdout: stdout, stderr: stderr, st: st, log: log, prog: progress.New(stderr), verbose: *verbose}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "enroll":
		return a.enroll(ctx, rest)
	case "config":
		return a.config(ctx, rest)
	case "backup":
		return a.backup(ctx, rest)
	case "versions":
		return a.versions(ctx, rest)
	case "ls":
		return a.ls(ctx, rest)
	case "restore":
		return a.restore(ctx, rest)
	case "diff":
		return a.diff(ctx, rest)
	case "dump":
		return a.dump(ctx, rest)
	case "run":
		return a.daemon(ctx, rest)
	case "now":
		return a.now(ctx, rest)
	case "limit":
		return a.limit(ctx, rest)
	case "help":
		fs.Usage()
		return nil
	}
	fs.Usage()
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

func (a *app) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	return fs
}

// parseInterleaved parses flags that may come after positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// client connects to the vault; everything it sends goes through the
// computer's bandwidth limit (applyLimit sets it from the vault's settings).
func (a *app) client() (*client.Client, state.Identity, error) {
	id, cert, pool, err := a.st.Load()
	if err != nil {
		return nil, id, err
	}
	a.lim = bwlimit.New(bandwidth.Fixed(bandwidth.Unlimited), clock.Real{})
	c := client.New(id.Vault, cert, pool, a.lim.RoundTripper)
	c.SetOnVaults(func(addrs []string) { // a pair's members changed
		if err := a.st.SetVault(strings.Join(addrs, ",")); err != nil {
			a.log.Warn("keep the vault's addresses", zap.Error(err))
		}
	})
	return c, id, nil
}

// applyLimit puts the computer's bandwidth profile in force.
func (a *app) applyLimit(s wire.Settings) error {
	if s.Bandwidth == "" {
		return nil
	}
	p, err := bandwidth.ParseProfile(s.Bandwidth)
	if err != nil {
		return fmt.Errorf("bandwidth profile from the vault: %w", err)
	}
	a.lim.SetProfile(p)
	return nil
}

func (a *app) enroll(ctx context.Context, args []string) error {
	fs := a.flags("enroll")
	addr := fs.String("vault", "", "the vault's `HOST:PORT`")
	tok := fs.String("token", "", "one-time enrolment `token` from `vaultctl token create`")
	host, _ := os.Hostname()
	name := fs.String("name", host, "this computer's `name` on the vault")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *tok == "" {
		return usageError{"enroll needs -vault HOST:PORT and -token TOKEN"}
	}
	t, err := wire.ParseToken(*tok)
	if err != nil {
		return err
	}
	csr, err := a.st.NewKey(*name)
	if err != nil {
		return err
	}
	resp, err := client.Enroll(ctx, *addr, t, wire.EnrollRequest{Token: *tok, Hostname: *name, CSR: csr})
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	vaultAddr := *addr
	if len(resp.Vaults) > 0 {
		// A pair: every data member's address, the leader's first; the
		// client follows the leader among them (agentkit/client).
		vaultAddr = strings.Join(resp.Vaults, ",")
	}
	id := state.Identity{Vault: vaultAddr, Computer: resp.ComputerID, Company: resp.Company, Hostname: *name}
	if err := a.st.SaveIdentity(id, resp.Certificate, resp.CA); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "enrolled as %s (%s) in company %s at %s\n", resp.ComputerID, *name, resp.Company, *addr)
	return nil
}

// shell wraps a command line for /bin/sh; empty stays empty.
func shell(cmd string) []string {
	if strings.TrimSpace(cmd) == "" {
		return nil
	}
	return []string{"/bin/sh", "-c", cmd}
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func (a *app) config(ctx context.Context, args []string) error {
	c, _, err := a.client()
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return usageError{"config needs set, list or delete"}
	}
	switch args[0] {
	case "list":
		comp, err := c.Computer(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tKIND\tREV\tPATHS\tINCLUDE\tEXCLUDE")
		for _, cfg := range comp.Configs {
			kind := cfg.Kind
			if cfg.Snapshot != "" {
				kind += " (" + cfg.Snapshot + " snapshot)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", cfg.Name, kind, cfg.Revision, strings.Join(cfg.Paths, " "),
				strings.Join(cfg.Include, " "), strings.Join(cfg.Exclude, " "))
		}
		return tw.Flush()
	case "delete":
		if len(args) != 2 {
			return usageError{"config delete NAME"}
		}
		return c.DeleteConfig(ctx, args[1])
	case "set":
		fs := a.flags("config set")
		var paths, inc, exc multi
		fs.Var(&paths, "path", "absolute `path` to protect (repeat)")
		fs.Var(&inc, "include", "only protect files matching `glob` (repeat)")
		fs.Var(&exc, "exclude", "skip paths matching `glob` (repeat)")
		cross := fs.Bool("cross-mounts", false, "descend into other filesystems")
		noAuto := fs.Bool("no-auto-exclude", false, "turn off the automatic exclusions")
		mode := fs.String("mode", "", "`scheduled` (default) or continuous")
		sched := fs.String("schedule", "", "when synchronizations may run: `24x7` (default) or weekly windows")
		interval := fs.String("interval", "", "scheduled: time between synchronizations (default 1h); continuous: between checkpoints (default 5m)")
		command := fs.String("command", "", "database/application configuration: shell `command` whose output is the consistent dump")
		pre := fs.String("pre", "", "shell `command` run before the dump (pause, freeze)")
		post := fs.String("post", "", "shell `command` run after the dump, even when it failed")
		snap := fs.String("snapshot", "", "read the paths from a read-only filesystem snapshot: `kind` btrfs (docs/snapshots.md)")
		system := fs.Bool("system", false, "system state: /etc, crontabs, bootloader configuration and reports of packages and disks")
		pos, err := parseInterleaved(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageError{"config set NAME -path DIR ... | config set NAME -command CMD [-pre CMD] [-post CMD]"}
		}
		if *system {
			if len(paths) > 0 || *command != "" {
				return usageError{"a -system configuration chooses its own paths: give neither -path nor -command"}
			}
			cfg, err := c.PutConfig(ctx, wire.Config{Name: pos[0], Kind: wire.KindSystem, Include: inc, Exclude: exc, Snapshot: *snap})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "configuration %s saved (revision %d): system state, with the reports under %s\n", cfg.Name, cfg.Revision, sysstate.ReportRoot)
			return nil
		}
		if *command != "" {
			if len(paths) > 0 {
				return usageError{"a configuration has either -path (files) or -command (database dump), not both"}
			}
			cfg, err := c.PutConfig(ctx, wire.Config{Name: pos[0], Kind: wire.KindDatabase, Command: shell(*command),
				Pre: shell(*pre), Post: shell(*post), Mode: *mode, Schedule: *sched, Interval: *interval})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "configuration %s saved (revision %d): its versions hold %s\n", cfg.Name, cfg.Revision, backup.DumpName(cfg.Name))
			return nil
		}
		for i, p := range paths {
			abs, err := filepath.Abs(p)
			if err != nil {
				return err
			}
			paths[i] = abs
		}
		cfg, err := c.PutConfig(ctx, wire.Config{Name: pos[0], Kind: wire.KindFiles, Paths: paths, Include: inc, Exclude: exc,
			CrossMounts: *cross, NoAutoExclude: *noAuto, Snapshot: *snap, Mode: *mode, Schedule: *sched, Interval: *interval})
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "configuration %s saved (revision %d)\n", cfg.Name, cfg.Revision)
		return nil
	}
	return usageError{fmt.Sprintf("unknown config command %q", args[0])}
}

// Summary is what `backup -json` prints per configuration.
type Summary struct {
	Config        string   `json:"config"`
	Version       uint64   `json:"version"`
	Seconds       float64  `json:"seconds"`
	CommitSeconds float64  `json:"commit_seconds"`
	Files         int64    `json:"files"`
	Dirs          int64    `json:"dirs"`
	Bytes         int64    `json:"bytes"`
	FilesRead     int64    `json:"files_read"`
	BytesRead     int64    `json:"bytes_read"`
	ChunksSent    int64    `json:"chunks_sent"`
	ChunksKnown   int64    `json:"chunks_known"`
	ChunksReused  int64    `json:"chunks_reused"`
	BytesSent     int64    `json:"bytes_sent"`
	Deleted       int64    `json:"deleted"`
	Unreadable    int64    `json:"unreadable"`
	Inconsistent  int64    `json:"inconsistent"`
	Problems      []string `json:"problems"`
}

func (a *app) backup(ctx context.Context, args []string) error {
	fs := a.flags("backup")
	asJSON := fs.Bool("json", false, "print a JSON summary per configuration")
	names, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	c, _, err := a.client()
	if err != nil {
		return err
	}
	comp, err := c.Computer(ctx)
	if err != nil {
		return err
	}
	if err := a.applyLimit(comp.Settings); err != nil {
		return err
	}
	var todo []wire.Config
	if len(names) == 0 {
		todo = comp.Configs
		if len(todo) == 0 {
			return errors.New("this computer has no configuration: create one with `vault-agent config set NAME -path DIR`")
		}
	}
	for _, n := range names {
		found := false
		for _, cfg := range comp.Configs {
			if cfg.Name == n {
				todo = append(todo, cfg)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("no configuration %q on the vault for this computer: see `vault-agent config list`", n)
		}
	}
	var incompleteN int
	for _, cfg := range todo {
		o := backup.Options{Vault: c, Config: cfg, ChunkKey: [32]byte(comp.ChunkKey), GearKey: [32]byte(comp.GearKey), State: a.st, Log: a.log}
		if a.prog.Enabled() {
			o.Progress = func(s *backup.Stats) {
				x := s.Snapshot()
				a.prog.Show("backup "+cfg.Name+":", x.Files, x.BytesRead, 0, x.Start)
			}
		}
		if o.Lock, err = a.st.Lock(cfg.Name); err != nil {
			return fmt.Errorf("backup %s: %w", cfg.Name, err)
		}
		release, err := a.prepare(ctx, &o)
		if err != nil {
			o.Lock.Release()
			return fmt.Errorf("backup %s: %w", cfg.Name, err)
		}
		res, err := backup.Run(ctx, o)
		release()
		o.Lock.Release()
		a.prog.Done()
		if err != nil {
			return fmt.Errorf("backup %s: %w", cfg.Name, err)
		}
		s := res.Stats
		if *asJSON {
			sum := Summary{Config: cfg.Name, Version: res.Seq, Seconds: res.Duration.Seconds(), CommitSeconds: res.Commit.Seconds(), Files: s.Files, Dirs: s.Dirs,
				Bytes: s.Bytes, FilesRead: s.FilesRead, BytesRead: s.BytesRead, ChunksSent: s.ChunksSent, ChunksKnown: s.ChunksKnown, ChunksReused: s.ChunksReused,
				BytesSent: s.BytesSent, Deleted: s.Deleted, Unreadable: s.Unreadable, Inconsistent: s.Inconsistent, Problems: res.Problems}
			if sum.Problems == nil {
				sum.Problems = []string{}
			}
			b, _ := json.Marshal(sum)
			fmt.Fprintln(a.stdout, string(b))
		} else {
			fmt.Fprintf(a.stdout, "%s@%d: %d files, %d dirs, %s; read %d files (%s), sent %d chunks (%s), %d deleted, in %s\n",
				cfg.Name, res.Seq, s.Files, s.Dirs, progress.Bytes(s.Bytes), s.FilesRead, progress.Bytes(s.BytesRead),
				s.ChunksSent, progress.Bytes(s.BytesSent), s.Deleted, res.Duration.Round(time.Millisecond))
			for _, p := range res.Problems {
				fmt.Fprintln(a.stdout, "  NOT PROTECTED:", p)
			}
		}
		if len(res.Problems) > 0 {
			incompleteN++
		}
	}
	if incompleteN > 0 {
		return incomplete{fmt.Sprintf("%d configuration(s) committed with files that could not be read: they are listed above and will be retried", incompleteN)}
	}
	return nil
}

func (a *app) versions(ctx context.Context, args []string) error {
	c, _, err := a.client()
	if err != nil {
		return err
	}
	config := ""
	if len(args) > 0 {
		config = args[0]
	}
	ms, err := c.Versions(ctx, config)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tFINISHED\tFILES\tSIZE\tSENT\tSTATE")
	for _, m := range ms {
		stateS := "complete"
		if !m.Complete() {
			stateS = fmt.Sprintf("incomplete: %d unreadable, %d inconsistent", m.Totals.Unreadable, m.Totals.Inconsistent)
		}
		fmt.Fprintf(tw, "%s@%d\t%s\t%d\t%s\t%s\t%s\n", m.Config, m.Seq, m.Finished.Local().Format(time.DateTime),
			m.Totals.Files, progress.Bytes(m.Totals.Bytes), progress.Bytes(m.Totals.BytesSent), stateS)
	}
	return tw.Flush()
}

// point is what a CONFIG@VERSION argument names: a version and, for a
// continuous configuration, the journal records on top of it.
type point struct {
	m       wire.Manifest
	journal []wire.Journal
}

func (p point) String() string {
	if len(p.journal) > 0 {
		return fmt.Sprintf("%s@%d+%d", p.m.Config, p.m.Seq, len(p.journal))
	}
	return fmt.Sprintf("%s@%d", p.m.Config, p.m.Seq)
}

// resolve parses CONFIG@VERSION[:PATH]. VERSION is a number (that version
// exactly), "latest" (the newest version and every journal record on top of
// it) or a time (RFC 3339, or "2006-01-02 15:04:05" local): the state as of
// that moment.
func (a *app) resolve(ctx context.Context, c *client.Client, spec string) (point, []byte, error) {
	var pt point
	cfg, rest, ok := strings.Cut(spec, "@")
	if !ok {
		return pt, nil, usageError{fmt.Sprintf("%q: want CONFIG@VERSION (a number, latest, or a time)", spec)}
	}
	ver, p := rest, ""
	// A time holds ':' itself: the path is what follows ":/" or the last ':'
	// after a number or latest.
	if i := strings.Index(rest, ":/"); i >= 0 {
		ver, p = rest[:i], rest[i+1:]
	} else if v, pp, ok := strings.Cut(rest, ":"); ok && (v == "latest" || isNumber(v)) {
		ver, p = v, pp
	}
	ms, err := c.Versions(ctx, cfg)
	if err != nil {
		return pt, nil, err
	}
	if len(ms) == 0 {
		return pt, nil, fmt.Errorf("configuration %q has no version yet", cfg)
	}
	switch {
	case ver == "latest" || ver == "":
		pt.m = ms[len(ms)-1]
		if pt.journal, err = c.JournalOf(ctx, cfg, pt.m.Seq); err != nil {
			return pt, nil, err
		}
	case isNumber(ver):
		n, _ := strconv.ParseUint(ver, 10, 64)
		found := false
		for _, x := range ms {
			if x.Seq == n {
				pt.m, found = x, true
			}
		}
		if !found {
			return pt, nil, fmt.Errorf("%s@%d does not exist: see `vault-agent versions %s`", cfg, n, cfg)
		}
	default:
		t, err := time.Parse(time.RFC3339, ver)
		if err != nil {
			t, err = time.ParseInLocation(time.DateTime, ver, time.Local)
		}
		if err != nil {
			return pt, nil, usageError{fmt.Sprintf("version %q: want a number, latest, or a time like 2026-11-24T14:05:00Z or \"2026-11-24 15:05:00\"", ver)}
		}
		found := false
		for _, x := range ms {
			if !x.Finished.After(t) {
				pt.m, found = x, true
			}
		}
		if !found {
			return pt, nil, fmt.Errorf("%s has no version finished by %s (the first finished %s)", cfg, t.Format(time.RFC3339), ms[0].Finished.Format(time.RFC3339))
		}
		js, err := c.JournalOf(ctx, cfg, pt.m.Seq)
		if err != nil {
			return pt, nil, err
		}
		for _, j := range js {
			if !j.Time.After(t) {
				pt.journal = append(pt.journal, j)
			}
		}
	}
	return pt, versionPath(p), nil
}

func isNumber(s string) bool {
	_, err := strconv.ParseUint(s, 10, 64)
	return err == nil
}

// versionPath turns a user's path (absolute or relative to the root) into
// a listing path.
func versionPath(p string) []byte {
	p = strings.Trim(filepath.Clean("/"+p), "/")
	if p == "" {
		return nil
	}
	return []byte(p)
}

// keys are the company's chunk key and the chunker's gear key.
func (a *app) keys(ctx context.Context, c *client.Client) (chunk, gear [32]byte, err error) {
	comp, err := c.Computer(ctx)
	if err != nil {
		return chunk, gear, err
	}
	if len(comp.ChunkKey) != 32 {
		return chunk, gear, fmt.Errorf("the vault sent a chunk key of %d bytes, not 32: ask the vault's operator", len(comp.ChunkKey))
	}
	if len(comp.GearKey) == 32 {
		gear = [32]byte(comp.GearKey)
	}
	return [32]byte(comp.ChunkKey), gear, nil
}

// pointed is what commands reading a version need: the client, the
// version (with journal records), the path asked for, the chunk key and
// the chunker's key.
type pointed struct {
	c       *client.Client
	pt      point
	path    []byte
	key     [32]byte
	gearKey [32]byte
}

// open connects and resolves a CONFIG@VERSION[:PATH] argument.
func (a *app) open(ctx context.Context, spec string) (*pointed, error) {
	c, _, err := a.client()
	if err != nil {
		return nil, err
	}
	pt, p, err := a.resolve(ctx, c, spec)
	if err != nil {
		return nil, err
	}
	key, gear, err := a.keys(ctx, c)
	if err != nil {
		return nil, err
	}
	return &pointed{c: c, pt: pt, path: p, key: key, gearKey: gear}, nil
}

func (a *app) ls(ctx context.Context, args []string) error {
	fs := a.flags("ls")
	asJSON := fs.Bool("json", false, "print every recorded field of each node as one JSON object per line")
	args, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(args) < 1 || len(args) > 2 {
		return usageError{"ls [-json] CONFIG@VERSION [PATH]"}
	}
	v, err := a.open(ctx, args[0])
	if err != nil {
		return err
	}
	c, m, prefix, key := v.c, v.pt, v.path, v.key
	if len(args) == 2 {
		prefix = versionPath(args[1])
	}
	enc := json.NewEncoder(a.stdout)
	rd, stop, err := restore.OpenVersion(ctx, c, key, m.m, m.journal)
	if err != nil {
		return err
	}
	defer stop()
	found := false
	for {
		n, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if len(prefix) > 0 && !(string(n.Path) == string(prefix) || strings.HasPrefix(string(n.Path), string(prefix)+"/")) {
			continue
		}
		found = true
		if *asJSON {
			if err := enc.Encode(jsonNode(n)); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintln(a.stdout, formatNode(n))
	}
	if !found && len(prefix) > 0 {
		return fmt.Errorf("%s is not in %s", prefix, m)
	}
	return nil
}

// jsonNode is a node for `ls -json`: byte strings that are valid UTF-8
// print as text, others as base64 (encoding/json's rule for []byte).
func jsonNode(n *tree.Node) any {
	type node tree.Node
	type out struct {
		Path, Target, LinkTo any `json:",omitempty"`
		*node
	}
	text := func(b []byte) any {
		if b == nil {
			return nil
		}
		if utf8.Valid(b) {
			return string(b)
		}
		return b
	}
	return out{Path: text(n.Path), Target: text(n.Target), LinkTo: text(n.LinkTo), node: (*node)(n)}
}

func formatNode(n *tree.Node) string {
	if n.Type == tree.TypeDeleted {
		return fmt.Sprintf("%-10s %-17s %12s %-19s /%s", "deleted", "", "", "", quote(n.Path))
	}
	mode := fmt.Sprintf("%s%04o", string("?-dlcbps"[min(int(n.Type), 7)]), n.Mode)
	owner := n.User
	if owner == "" {
		owner = strconv.Itoa(int(n.UID))
	}
	group := n.Group
	if group == "" {
		group = strconv.Itoa(int(n.GID))
	}
	s := fmt.Sprintf("%-10s %-17s %12d %s /%s", mode, owner+"/"+group, n.Size,
		time.Unix(n.Mtime.Sec, n.Mtime.Nsec).Local().Format(time.DateTime), quote(n.Path))
	if n.Type == tree.TypeSymlink {
		s += " -> " + quote(n.Target)
	}
	if n.LinkTo != nil {
		s += " (hard link to /" + quote(n.LinkTo) + ")"
	}
	if n.MountPoint {
		s += " (mount point)"
	}
	if n.Status != tree.StatusOK {
		s += " (NOT PROTECTED: " + n.Err + ")"
	}
	return s
}

func quote(b []byte) string {
	s := string(b)
	if strconv.CanBackquote(s) && !strings.ContainsAny(s, "`") {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

// maxParallel bounds -parallel: each file restored at once holds up to two
// chunk-sized buffers.
const maxParallel = 64

func (a *app) restore(ctx context.Context, args []string) error {
	fs := a.flags("restore")
	to := fs.String("to", "", "restore under this `directory` (default: the original place)")
	dry := fs.Bool("dry-run", false, "list what would be restored, change nothing")
	existing := fs.String("existing", "skip", "for files that exist: `skip`, overwrite (what there already holds the version's content is kept, or copied, not downloaded) or keep-both")
	byName := fs.Bool("by-name", false, "map owners by user and group names instead of numbers")
	parallel := fs.Int("parallel", 0, "files restored at once (0: two per CPU, 4 to 16)")
	devices := fs.Bool("devices", false, "recreate device nodes (as root only)")
	setid := fs.Bool("setid", false, "keep set-user-ID and set-group-ID bits and file capabilities (as root only)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"restore CONFIG@VERSION[:PATH] [-to DIR]"}
	}
	switch restore.Existing(*existing) {
	case restore.Skip, restore.Overwrite, restore.KeepBoth:
	default:
		return usageError{fmt.Sprintf("-existing %q: want skip, overwrite or keep-both", *existing)}
	}
	if *parallel < 0 || *parallel > maxParallel {
		return usageError{fmt.Sprintf("-parallel %d: want 0 (two per CPU) to %d", *parallel, maxParallel)}
	}
	v, err := a.open(ctx, pos[0])
	if err != nil {
		return err
	}
	c, m, prefix, key := v.c, v.pt, v.path, v.key
	target := *to
	if target == "" {
		target = "/"
	}
	o := restore.Options{Source: c, ChunkKey: key, GearKey: v.gearKey, Manifest: m.m, Journal: m.journal, Prefix: prefix, Target: target, DryRun: *dry,
		Existing: restore.Existing(*existing), Meta: meta.Options{ByName: *byName, SkipOwner: os.Geteuid() != 0},
		Log: a.log, Out: a.stdout, Workers: *parallel, Devices: *devices, SetID: *setid}
	if a.prog.Enabled() {
		o.Progress = func(s *restore.Stats) { a.prog.Show("restore:", s.Files, s.Bytes, m.m.Totals.Bytes, s.Start) }
	}
	// The vault sees only chunk reads: tell it of the restore, so its
	// audit log shows it (a dry run changes nothing and is not told).
	rep := wire.RestoreReport{ID: restoreID(), Phase: wire.RestoreStarted, Config: m.m.Config, Version: m.m.Seq, Journal: len(m.journal),
		Path: "/" + strings.TrimPrefix(string(prefix), "/"), Target: target, Existing: *existing}
	tell := func() {
		if *dry {
			return
		}
		if err := c.ReportRestore(ctx, rep); err != nil {
			a.log.Warn("the vault was not told of this restore (its audit log will lack it)", zap.String("phase", rep.Phase), zap.Error(err))
		}
	}
	tell()
	res, err := restore.Run(ctx, o)
	a.prog.Done()
	rep.Phase = wire.RestoreFinished
	if res != nil {
		rep.Files, rep.Bytes, rep.Skipped, rep.Failed = res.Stats.Files, res.Stats.Bytes, res.Stats.Skipped, res.Stats.Failed
		rep.Kept, rep.Reused = res.Stats.Kept, res.Stats.Reused
	}
	if err != nil {
		rep.Error = truncateText(err.Error(), wire.MaxCommandText)
	}
	tell()
	if res != nil {
		for _, p := range res.Problems {
			fmt.Fprintln(a.stdout, "FAILED:", p)
		}
		for _, p := range res.Notes {
			fmt.Fprintln(a.stdout, "NOTE:", p)
		}
		verb := "restored"
		if *dry {
			verb = "would restore"
		}
		fmt.Fprintf(a.stdout, "%s %d files (%s) of %s to %s; %d skipped (exist), %d failed\n", verb, res.Stats.Files,
			progress.Bytes(res.Stats.Bytes), m, target, res.Stats.Skipped, res.Stats.Failed)
		if st := res.Stats; st.Kept > 0 || st.Reused > 0 {
			// -existing overwrite read the files there first.
			fmt.Fprintf(a.stdout, "%d of them were there with their content (only their metadata set); %s of the others copied from the files there, not downloaded\n",
				st.Kept, progress.Bytes(st.Reused))
		}
	}
	if err != nil {
		return err
	}
	if len(res.Problems) > 0 {
		msg := fmt.Sprintf("%d object(s) could not be restored: listed above", len(res.Problems))
		if res.NoSpace {
			msg += fmt.Sprintf("; the filesystem under %s is full (or a disk quota reached): free space there, or restore to another place with -to, and run the restore again (what was restored is skipped)", target)
		}
		return incomplete{msg}
	}
	return nil
}

// restoreID is a random id joining a restore's two reports to the vault.
func restoreID() string {
	var b [8]byte
	rand.Read(b[:])
	return "r-" + hex.EncodeToString(b[:])
}

// truncateText shortens s to at most n bytes on a rune boundary.
func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

func (a *app) diff(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return usageError{"diff CONFIG@VERSION DIR"}
	}
	v, err := a.open(ctx, args[0])
	if err != nil {
		return err
	}
	return runDiff(ctx, a, v.c, v.key, v.pt, v.path, args[1])
}

func (a *app) dump(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usageError{"dump CONFIG@VERSION:PATH"}
	}
	v, err := a.open(ctx, args[0])
	if err != nil {
		return err
	}
	c, m, p, key := v.c, v.pt, v.path, v.key
	if len(p) == 0 {
		return usageError{"dump needs the path of one file: CONFIG@VERSION:PATH (see `vault-agent ls`)"}
	}
	rd, stop, err := restore.OpenVersion(ctx, c, key, m.m, m.journal)
	if err != nil {
		return err
	}
	defer stop()
	for {
		n, err := rd.Next()
		if err == io.EOF {
			return fmt.Errorf("%s is not in %s: see `vault-agent ls`", p, m)
		}
		if err != nil {
			return err
		}
		if string(n.Path) != string(p) {
			continue
		}
		if n.Type != tree.TypeFile || n.LinkTo != nil || n.Sparse {
			return fmt.Errorf("%s is a %s, not a plain file: use restore", p, n.Type)
		}
		if n.Status != tree.StatusOK {
			return fmt.Errorf("%s was not backed up completely: %s", p, n.Err)
		}
		_, err = io.Copy(a.stdout, restore.OpenContent(ctx, c, key, n))
		return err
	}
}

func (a *app) daemon(ctx context.Context, args []string) error {
	fs := a.flags("run")
	poll := fs.Duration("poll", 30*time.Second, "how often to ask the vault for configuration changes")
	quiet := fs.Duration("quiet", 0, "continuous mode: quiet time before changes are sent (default 200ms)")
	retry := fs.Duration("retry", 0, "first delay after a failed synchronization; it doubles up to 15 minutes (default 30s)")
	browse := fs.String("browse", "/", "comma-separated `directories` the vault may browse (the portal's wizard); none: no browsing")
	noCommands := fs.Bool("no-commands", false, "take no commands from the vault (browse, back up now, restore, compare)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	daemonMemory()
	cfg := zap.NewProductionConfig()
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.OutputPaths = []string{"stderr"}
	if a.verbose {
		cfg.Level = zap.NewAtomicLevelAt(zapcore.DebugLevel)
	}
	log, err := cfg.Build()
	if err != nil {
		return err
	}
	defer log.Sync()
	o := daemon.Options{State: a.st, Log: log, Poll: *poll, Retry: *retry, NoCommands: *noCommands}
	for _, d := range strings.Split(*browse, ",") {
		switch d = strings.TrimSpace(d); {
		case d == "none":
			o.NoBrowse = true
		case d != "" && filepath.IsAbs(d):
			o.Browse = append(o.Browse, filepath.Clean(d))
		case d != "":
			return usageError{fmt.Sprintf("-browse %q: want absolute directories, comma-separated, or none", d)}
		}
	}
	o.Watch.Quiet = *quiet
	return daemon.Run(ctx, o)
}

func (a *app) now(ctx context.Context, args []string) error {
	config := ""
	if len(args) > 1 {
		return usageError{"now [CONFIG]"}
	}
	if len(args) == 1 {
		config = args[0]
	}
	if err := daemon.RunNow(ctx, a.st, config); err != nil {
		if errors.Is(err, daemon.ErrNoDaemon) {
			return fmt.Errorf("%w: start it with `vault-agent run`, or synchronize in this process with `vault-agent backup`", err)
		}
		return err
	}
	fmt.Fprintln(a.stdout, "the agent daemon synchronizes now")
	return nil
}

func (a *app) limit(ctx context.Context, args []string) error {
	c, _, err := a.client()
	if err != nil {
		return err
	}
	switch len(args) {
	case 0:
		comp, err := c.Computer(ctx)
		if err != nil {
			return err
		}
		p := comp.Settings.Bandwidth
		if p == "" {
			p = "unlimited"
		}
		fmt.Fprintln(a.stdout, p)
		return nil
	case 1:
		if args[0] != "" {
			if _, err := bandwidth.ParseProfile(args[0]); err != nil {
				return err
			}
		}
		if _, err := c.PutSettings(ctx, wire.Settings{Bandwidth: args[0]}); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, "upload limit saved on the vault; a running agent applies it at its next poll")
		return nil
	}
	return usageError{"limit [PROFILE]"}
}
