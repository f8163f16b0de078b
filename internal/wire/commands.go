package wire

import (
	"fmt"
	"path"
	"strings"
	"time"
)

// The command channel (docs/protocol.md, "Commands"): the vault keeps a
// queue of commands per computer (browse a live path, back up now,
// restore, compare); the agent keeps a long-poll open to PathCommandPoll,
// runs what it receives, and posts progress and a result back. A command
// delivered but not finished is delivered again (or, after
// MaxCommandAttempts deliveries, reported as interrupted) when the agent's
// next poll does not name it as running: none is lost silently.
const (
	PathCommandPoll = "/v1/commands/poll" // POST CommandPoll, answer CommandBatch
	PathCommand     = "/v1/commands/"     // POST /v1/commands/ID/progress (CommandProgress), /v1/commands/ID/result (CommandResult)
)

// Limits of the command channel.
const (
	// MaxCommandWait is the longest a poll waits for a command; the vault
	// answers an empty batch then and the agent polls again. It stays well
	// under the vault's request deadline (1 minute).
	MaxCommandWait = 25 * time.Second
	// MaxRunningCommands bounds the ids a poll names, and so the commands
	// an agent runs at once.
	MaxRunningCommands = 16
	// MaxCommandAttempts is how often a command is delivered before it is
	// recorded as interrupted.
	MaxCommandAttempts = 3
	// MaxCommandResult bounds the JSON of a result, and MaxCommandFailures
	// the per-file failures it lists (it counts the others).
	MaxCommandResult   = 512 << 10
	MaxCommandFailures = 500
	// MaxBrowseEntries bounds one directory level of a browse answer.
	MaxBrowseEntries = 2000
	// MaxCompareEntries bounds each list (added, changed, removed) of a
	// compare answer.
	MaxCompareEntries = 1000
	// MaxRestorePaths bounds the bytes of the paths a restore names (so a
	// batch of MaxRunningCommands fits in an answer of MaxAnswer bytes).
	MaxRestorePaths = 32 << 10
	// MaxCommandText bounds a message, an error or a path in a command.
	MaxCommandText = 4096
)

// Kinds of commands.
const (
	CmdBrowse  = "browse"  // list one directory level of the live file tree
	CmdBackup  = "backup"  // synchronize a configuration now
	CmdRestore = "restore" // restore a version (or part of it)
	CmdCompare = "compare" // compare a version with the live files
	// CmdConfigChanged asks the agent to fetch its configurations now
	// instead of at its next poll.
	CmdConfigChanged = "config_changed"
)

// States of a command on the vault.
const (
	CmdQueued      = "queued"      // not yet delivered
	CmdRunning     = "running"     // delivered; the agent runs it
	CmdDone        = "done"        // finished (its result may still list per-file failures)
	CmdFailed      = "failed"      // the agent could not run it
	CmdInterrupted = "interrupted" // delivered MaxCommandAttempts times and never finished
)

// CodeFinished answers progress for a command that has already ended
// (finished, or interrupted after too many deliveries): the agent stops it.
const CodeFinished = "finished"

// AgentCommand is one command for an agent.
type AgentCommand struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Attempt int       `json:"attempt"` // 1 at the first delivery
	Created time.Time `json:"created"`

	Browse  *BrowseArgs  `json:"browse,omitempty"`
	Backup  *BackupArgs  `json:"backup,omitempty"`
	Restore *RestoreArgs `json:"restore,omitempty"`
	Compare *CompareArgs `json:"compare,omitempty"`
}

// BrowseArgs asks for one directory level; an empty Path asks for the
// roots: "/" and the computer's volumes (mount points of real filesystems).
type BrowseArgs struct {
	Path string `json:"path"`
}

// BackupArgs names the configuration to synchronize now.
type BackupArgs struct {
	Config string `json:"config"`
}

// RestoreArgs restores a version of a configuration.
type RestoreArgs struct {
	Config  string `json:"config"`
	Version uint64 `json:"version"` // 0: the newest
	// Paths are the version's paths to restore (absolute, as on the
	// computer); empty: all of it.
	Paths []string `json:"paths,omitempty"`
	// To is the directory to restore into (paths under it as under "/");
	// empty: the original place.
	To string `json:"to,omitempty"`
	// Existing is the policy for files already there: "skip" (default),
	// "overwrite" or "keep-both".
	Existing string `json:"existing,omitempty"`
	// Computer, when set, is the computer (of the same company) whose
	// version is restored onto this one; empty: this computer's own.
	Computer string `json:"computer,omitempty"`
	// At, when set, adds the journal records on top of Version made by
	// then (a continuous configuration's moment).
	At time.Time `json:"at,omitzero"`
}

// PathRestorePoint answers, for a restore command naming Computer or At,
// the version and journal records to restore (GET, RestorePoint): the
// vault resolves them, since an agent reads only its own computer's
// versions otherwise.
func PathRestorePoint(id string) string { return PathCommand + id + "/point" }

// RestorePoint is the version and journal records a restore command
// restores.
type RestorePoint struct {
	Manifest Manifest  `json:"manifest"`
	Journal  []Journal `json:"journal"`
}

// CompareArgs compares a version (0: the newest) with the live files, or
// only the part under Path.
type CompareArgs struct {
	Config  string `json:"config"`
	Version uint64 `json:"version"`
	Path    string `json:"path,omitempty"`
}

// CommandPoll is the agent's poll: the commands it runs now, and how long
// the vault may hold the answer.
type CommandPoll struct {
	Running []string `json:"running"`
	WaitMS  int64    `json:"wait_ms"`
}

// CommandBatch answers a poll with the commands to run (none when the
// wait passed).
type CommandBatch struct {
	Commands []AgentCommand `json:"commands"`
}

// CommandProgress is what an agent reports while it runs a command.
type CommandProgress struct {
	Files      int64     `json:"files"`
	Bytes      int64     `json:"bytes"`
	TotalFiles int64     `json:"total_files,omitempty"` // 0: unknown
	TotalBytes int64     `json:"total_bytes,omitempty"` // 0: unknown
	Rate       int64     `json:"rate"`                  // bytes per second
	ETASeconds int64     `json:"eta_seconds,omitempty"` // 0: unknown
	Failed     int64     `json:"failed,omitempty"`      // files that failed so far
	Message    string    `json:"message,omitempty"`
	Time       time.Time `json:"time,omitzero"` // set by the vault when it receives it
}

// CommandResult is how a command ended.
type CommandResult struct {
	State string `json:"state"` // CmdDone or CmdFailed (the vault sets CmdInterrupted)
	Error string `json:"error,omitempty"`
	Files int64  `json:"files,omitempty"`
	Bytes int64  `json:"bytes,omitempty"`
	// Kept counts the files a restore over existing ones (existing
	// "overwrite") found with the version's content, whose metadata alone
	// it set; Reused the bytes it copied from files there instead of
	// downloading them. Both are among Files and Bytes.
	Kept   int64 `json:"kept,omitempty"`
	Reused int64 `json:"reused,omitempty"`
	// Failures lists files that failed (at most MaxCommandFailures);
	// FailedCount counts them all.
	Failures    []FileFailure `json:"failures,omitempty"`
	FailedCount int64         `json:"failed_count,omitempty"`

	Browse  *BrowseResult  `json:"browse,omitempty"`
	Backup  *BackupResult  `json:"backup,omitempty"`
	Compare *CompareResult `json:"compare,omitempty"`
}

// FileFailure is one file a command could not handle, and why.
type FileFailure struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

// BrowseEntry is one object of a live directory.
type BrowseEntry struct {
	Name  string    `json:"name"`
	Type  string    `json:"type"` // dir, file, symlink, other
	Size  int64     `json:"size"`
	MTime time.Time `json:"mtime"`
	// Mount is the filesystem type when the entry is a mount point (at the
	// roots: every volume).
	Mount string `json:"mount,omitempty"`
}

// BrowseResult is one directory level.
type BrowseResult struct {
	Path      string        `json:"path"`
	Entries   []BrowseEntry `json:"entries"`
	Truncated bool          `json:"truncated,omitempty"` // more than MaxBrowseEntries
}

// BackupResult is the version a back-up-now made.
type BackupResult struct {
	Config    string `json:"config"`
	Seq       uint64 `json:"seq"`
	BytesSent int64  `json:"bytes_sent"`
}

// CompareResult lists what changed on the computer since a version.
type CompareResult struct {
	Config    string   `json:"config"`
	Version   uint64   `json:"version"`
	Added     []string `json:"added"`
	Changed   []string `json:"changed"`
	Removed   []string `json:"removed"`
	Counts    [3]int64 `json:"counts"` // added, changed, removed (all, beyond the lists' bound)
	Truncated bool     `json:"truncated,omitempty"`
}

// CheckCommand checks a command's kind and arguments: each kind carries
// exactly its own arguments, paths are absolute and clean, text is bounded.
func CheckCommand(c *AgentCommand) error {
	args := 0
	for _, set := range []bool{c.Browse != nil, c.Backup != nil, c.Restore != nil, c.Compare != nil} {
		if set {
			args++
		}
	}
	want := 1
	if c.Kind == CmdConfigChanged {
		want = 0
	}
	if args != want {
		return fmt.Errorf("a %q command carries %d argument sets, want %d", c.Kind, args, want)
	}
	switch c.Kind {
	case CmdBrowse:
		if c.Browse == nil {
			return fmt.Errorf("a browse command needs its browse arguments")
		}
		if c.Browse.Path != "" {
			return CheckLivePath(c.Browse.Path)
		}
	case CmdBackup:
		if c.Backup == nil || c.Backup.Config == "" {
			return fmt.Errorf("a backup command names a configuration")
		}
	case CmdRestore:
		r := c.Restore
		if r == nil || r.Config == "" {
			return fmt.Errorf("a restore command names a configuration")
		}
		n := 0
		for _, p := range r.Paths {
			if err := CheckLivePath(p); err != nil {
				return err
			}
			n += len(p)
		}
		if n > MaxRestorePaths {
			return fmt.Errorf("a restore command names %d bytes of paths, over the limit of %d: restore their common directory", n, MaxRestorePaths)
		}
		if r.To != "" {
			if err := CheckLivePath(r.To); err != nil {
				return err
			}
		}
		if r.Computer != "" && (len(r.Computer) > 64 || strings.ContainsAny(r.Computer, "/ \x00")) {
			return fmt.Errorf("a restore command names computer %q, not a computer id", r.Computer)
		}
		if (r.Computer != "" || !r.At.IsZero()) && r.Version == 0 {
			return fmt.Errorf("a restore command from another computer or at a moment names its version")
		}
		switch r.Existing {
		case "", "skip", "overwrite", "keep-both":
		default:
			return fmt.Errorf("existing-file policy %q: want skip, overwrite or keep-both", r.Existing)
		}
	case CmdCompare:
		if c.Compare == nil || c.Compare.Config == "" {
			return fmt.Errorf("a compare command names a configuration")
		}
		if c.Compare.Path != "" {
			return CheckLivePath(c.Compare.Path)
		}
	case CmdConfigChanged:
	default:
		return fmt.Errorf("unknown command kind %q (want %s, %s, %s, %s or %s)", c.Kind, CmdBrowse, CmdBackup, CmdRestore, CmdCompare, CmdConfigChanged)
	}
	return nil
}

// CheckLivePath checks a path on the computer: absolute, clean, bounded.
func CheckLivePath(p string) error {
	if len(p) > MaxCommandText {
		return fmt.Errorf("path of %d bytes is over the %d-byte limit", len(p), MaxCommandText)
	}
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p || strings.ContainsRune(p, 0) {
		return fmt.Errorf("path %q is not an absolute, clean path", p)
	}
	return nil
}
