// Package wire defines the agent API of a vault: its paths, JSON messages and
// the binary frames of chunk queries, uploads and downloads
// (docs/protocol.md).
package wire

import (
	"time"

	"vaultnode/internal/tree"
)

// Paths of the agent API. All but Health and Enroll need a client certificate.
// The vault's routes (appliance/vault, table routeCaps) and docs/protocol.md
// list the same; a test in appliance/vault holds them together.
const (
	PathHealth   = "/v1/health"
	PathEnroll   = "/v1/enroll"
	PathComputer = "/v1/computer"     // GET: identity, chunk key, configurations
	PathConfigs  = "/v1/configs/"     // PUT/DELETE /v1/configs/NAME
	PathSessions = "/v1/sessions"     // POST: open a session
	PathSession  = "/v1/sessions/"    // POST /v1/sessions/ID/{lack,chunks,commit,abort,journal}
	PathVersions = "/v1/versions/"    // GET /v1/versions/CONFIG (or *)
	PathChunks   = "/v1/chunks/get"   // POST: body of IDs, response frames
	PathStatus   = "/v1/status"       // POST: agent reports a configuration's state
	PathSettings = "/v1/settings"     // PUT: the computer's settings
	PathJournal  = "/v1/journal/"     // GET /v1/journal/CONFIG: records on top of the last version
	ServerName   = "vaultd.vaultnode" // DNS name in every vault server certificate
	MediaFrames  = "application/x-vaultnode-frames"
)

// Limits the vault enforces; a request over them gets 413.
const (
	MaxLackIDs    = 65536    // IDs per lack query
	MaxUploadBody = 64 << 20 // bytes per upload request
	MaxGetIDs     = 4096     // IDs per chunk download request
	MaxJSONBody   = 1 << 20  // bytes of any JSON request
)

// Error is the body of every non-2xx answer.
type Error struct {
	Code    string `json:"code"`    // stable machine-readable code, e.g. "unknown_session"
	Message string `json:"message"` // what went wrong and what to do
	// RequestID names the request in the vault's log (also in the
	// X-Request-Id header of every answer).
	RequestID string `json:"request_id,omitempty"`
}

// HeaderRequestID carries the id the vault gave a request, on every answer.
const HeaderRequestID = "X-Request-Id"

// HeaderLeader names, on a not_leader answer, the agent API address of the
// pair's leader (docs/protocol.md, "Pairs").
const HeaderLeader = "X-Vault-Leader"

// HeaderVaults lists, on every answer of a pair's leader, the agent API
// addresses of the pair's data members, comma-separated: an agent keeps
// them, so it finds a member that joined after its enrolment.
const HeaderVaults = "X-Vault-Members"

// Error codes.
const (
	CodeBadRequest     = "bad_request"
	CodeTooLarge       = "too_large"
	CodeUnauthorized   = "unauthorized"    // no or bad client certificate
	CodeRevoked        = "revoked"         // the computer was revoked
	CodeForbidden      = "forbidden"       // the principal lacks the capability the route needs
	CodeUnknownSession = "unknown_session" // expired, finished or never opened; open a new one
	CodeBadToken       = "bad_token"       // unknown, used or expired enrolment token
	CodeMismatch       = "chunk_mismatch"  // a chunk's content does not hash to its ID
	CodeMissingChunk   = "missing_chunk"   // a commit references chunks the vault lacks
	CodeNotFound       = "not_found"
	CodeBusy           = "busy" // too many requests of this company or computer in flight: retry after Retry-After
	CodeInternal       = "internal"
	CodeNoSpace        = "no_space" // the vault's disk is full
	// CodeStorageFailed (503): the vault's disk array failed; nothing is
	// written or served until it is repaired. Not worth retrying soon.
	CodeStorageFailed = "storage_failed"
	CodeNotLeader     = "not_leader" // a pair member that does not lead: ask the leader (HeaderLeader), or another address
	// CodeQuotaExceeded: the company is at its quota; prune and collect,
	// or raise the quota. Restores go on.
	CodeQuotaExceeded = "quota_exceeded"
)

// EnrollRequest registers a computer with a one-time token.
type EnrollRequest struct {
	Token    string `json:"token"`
	Hostname string `json:"hostname"`
	CSR      []byte `json:"csr"` // PEM certificate request for the computer's key
}

// EnrollResponse carries the computer's identity.
type EnrollResponse struct {
	ComputerID  string `json:"computer_id"`
	Company     string `json:"company"`
	Certificate []byte `json:"certificate"` // PEM, signed by the vault CA
	CA          []byte `json:"ca"`          // PEM of the vault CA
	// Vaults are the agent API addresses of every data member of a pair
	// (docs/protocol.md, "Pairs"); empty for a single vault.
	Vaults []string `json:"vaults,omitempty"`
}

// Computer is what GET /v1/computer answers.
type Computer struct {
	ID       string   `json:"id"`
	Name     string   `json:"name"`
	Company  string   `json:"company"`
	ChunkKey []byte   `json:"chunk_key"` // Kid, 32 bytes
	GearKey  []byte   `json:"gear_key"`  // Kcdc, 32 bytes
	Configs  []Config `json:"configs"`
	Settings Settings `json:"settings"`
}

// Config kinds.
const (
	KindFiles    = "files"
	KindDatabase = "database"
	// KindSystem captures what it takes to rebuild the machine: /etc,
	// crontabs, the bootloader configuration and generated reports of
	// packages, disks and filesystems (agentkit/sysstate).
	KindSystem = "system"
)

// Snapshot kinds a files or system configuration can ask for.
const (
	SnapshotNone  = ""
	SnapshotBtrfs = "btrfs" // a read-only btrfs snapshot of each root's subvolume (docs/snapshots.md)
)

// Config is a backup configuration. The vault is its source of truth.
type Config struct {
	Name     string   `json:"name"`
	Kind     string   `json:"kind"`
	Revision int64    `json:"revision,omitempty"` // set by the vault
	Paths    []string `json:"paths,omitempty"`    // absolute roots
	Include  []string `json:"include,omitempty"`  // globs; empty = everything
	Exclude  []string `json:"exclude,omitempty"`  // globs
	// CrossMounts lets the walk descend into other filesystems.
	CrossMounts bool `json:"cross_mounts,omitempty"`
	// NoAutoExclude turns off the automatic exclusions.
	NoAutoExclude bool `json:"no_auto_exclude,omitempty"`
	// Command is a database/application configuration's dump command
	// (argv); its standard output is the consistent dump.
	Command []string `json:"command,omitempty"`
	// Mode is "scheduled" (default: at the scheduled times, synchronize
	// what changed) or "continuous" (capture changes as they are made).
	Mode string `json:"mode,omitempty"`
	// Schedule is when synchronizations may run: "24x7" (default) or
	// weekly windows, e.g. "tz=Europe/Paris; mon-fri 22:00-06:00 complete".
	Schedule string `json:"schedule,omitempty"`
	// Interval is, in scheduled mode, the time between synchronizations
	// while the schedule is open (Go duration, default "1h"); in continuous
	// mode, the time between checkpoints (default "5m").
	Interval string `json:"interval,omitempty"`
	// Created is when the vault first saw the configuration.
	Created time.Time `json:"created,omitzero"`
	// Pre and Post run before and after Command (argv), for applications
	// that need a pause or a freeze; Post runs even when the dump failed.
	Pre  []string `json:"pre,omitempty"`
	Post []string `json:"post,omitempty"`
	// Snapshot, when set, makes the agent read a files or system
	// configuration from a read-only filesystem snapshot taken at the
	// start of each synchronization (SnapshotBtrfs), so open files are
	// copied as they were at one instant.
	Snapshot string `json:"snapshot,omitempty"`
}

// Intervals of a configuration (see Config.Interval).
const (
	DefaultInterval           = time.Hour       // scheduled mode
	DefaultCheckpointInterval = 5 * time.Minute // continuous mode
	MinInterval               = time.Second     // the shortest the vault accepts
)

// SyncInterval is the configuration's interval, or its mode's default when
// Interval is unset or not a positive duration. The agent runs by it and the
// vault judges "behind schedule" by it.
func (c Config) SyncInterval() time.Duration {
	if d, err := time.ParseDuration(c.Interval); err == nil && d > 0 {
		return d
	}
	if c.Mode == ModeContinuous {
		return DefaultCheckpointInterval
	}
	return DefaultInterval
}

// Modes of a configuration.
const (
	ModeScheduled  = "scheduled"
	ModeContinuous = "continuous"
)

// Settings are a computer's own settings, held by the vault.
type Settings struct {
	// Bandwidth is the upload limit profile, e.g. "mon-fri 08:00-18:00
	// 2Mbit/s; otherwise unlimited" (empty: unlimited).
	Bandwidth string `json:"bandwidth,omitempty"`
	// RunNow counts "back up now" requests per configuration; the agent
	// runs a configuration once each time its count grows.
	RunNow map[string]int64 `json:"run_now,omitempty"`
}

// Report is what an agent tells the vault about one configuration.
type Report struct {
	Config string    `json:"config"`
	State  string    `json:"state"` // running, idle, waiting, error
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
	// Backend names the change capture in use (continuous mode) and its limits.
	Capture string `json:"capture,omitempty"`
}

// Agent-reported states.
const (
	AgentRunning = "running"
	AgentIdle    = "idle"
	AgentWaiting = "waiting" // outside its schedule
	AgentError   = "error"
)

// Journal is a continuous-mode record: the nodes that changed since the
// previous record, on top of version Base.
type Journal struct {
	Base    uint64          `json:"base"`
	N       uint64          `json:"n"` // 1, 2, ... after Base
	Time    time.Time       `json:"time"`
	Listing []tree.ChunkRef `json:"listing"` // a listing of changed and deleted nodes only
	Totals  Totals          `json:"totals"`
}

// JournalCommit records changes in an open session.
type JournalCommit struct {
	Listing []tree.ChunkRef `json:"listing"`
	Time    time.Time       `json:"time"`
}

// OpenSession starts a synchronization of one configuration.
type OpenSession struct {
	Config string `json:"config"`
}

// Session is the answer to OpenSession.
type Session struct {
	ID       string    `json:"id"`
	Previous uint64    `json:"previous"` // sequence of the last committed version, 0 if none
	Expires  time.Time `json:"expires"`
}

// Commit ends a session with the version's listing.
type Commit struct {
	Listing []tree.ChunkRef `json:"listing"`
	Started time.Time       `json:"started"`
	Totals  Totals          `json:"totals"`
}

// Totals summarize a version.
type Totals struct {
	Files        int64 `json:"files"`
	Dirs         int64 `json:"dirs"`
	Bytes        int64 `json:"bytes"`        // logical bytes of regular files
	Unreadable   int64 `json:"unreadable"`   // nodes with StatusUnreadable
	Inconsistent int64 `json:"inconsistent"` // nodes with StatusInconsistent
	Deleted      int64 `json:"deleted"`
	ChunksSent   int64 `json:"chunks_sent"`
	BytesSent    int64 `json:"bytes_sent"` // chunk payload bytes uploaded
}

// Committed is the answer to Commit.
type Committed struct {
	Seq uint64 `json:"seq"`
}

// Manifest describes a committed version (docs/format.md).
type Manifest struct {
	Magic    string          `cbor:"1,keyasint" json:"-"`
	Company  string          `cbor:"2,keyasint" json:"company"`
	Computer string          `cbor:"3,keyasint" json:"computer"`
	Config   string          `cbor:"4,keyasint" json:"config"`
	Seq      uint64          `cbor:"5,keyasint" json:"seq"`
	Started  time.Time       `cbor:"6,keyasint" json:"started"`
	Finished time.Time       `cbor:"7,keyasint" json:"finished"`
	Listing  []tree.ChunkRef `cbor:"8,keyasint" json:"listing"`
	Totals   Totals          `cbor:"9,keyasint" json:"totals"`
}

// ManifestMagic opens every manifest.
const ManifestMagic = "vaultnode manifest v1"

// Complete reports whether a version protects its whole selection.
func (m *Manifest) Complete() bool { return m.Totals.Unreadable == 0 && m.Totals.Inconsistent == 0 }

// Versions answers GET /v1/versions/CONFIG.
type Versions struct {
	Versions []Manifest `json:"versions"`
}
