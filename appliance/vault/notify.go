package vault

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/mail"
	"vaultnode/internal/atomicfile"
	"vaultnode/internal/storagehealth"
	"vaultnode/internal/wire"
)

// E-mail of events (issue 12; docs/api.md, "E-mail"). The notifier looks
// at every configuration's status once a minute (and after each commit),
// compares it with what it told before, and queues one message per change
// of state to the computer's technical contact and to the users who chose
// that kind of event (or gathers it into their daily digest). What it told
// is kept in DATA/mail/notify.json; messages to queue are written there
// first (an outbox) and queued under ids fixed by it, so a crash between
// the two queues each message once (docs/format.md, "Outbound mail").

// Kinds of events, as users choose them.
const (
	EventProtected = "protected" // the initial synchronization completed: the computer is protected
	EventWarnings  = "warnings"  // configuration warnings in the testing period
	EventBehind    = "behind"    // behind schedule
	EventError     = "error"     // the agent reports an error
	EventOffline   = "offline"   // no contact for longer than Options.OfflineMail
	EventRecovered = "recovered" // back to normal after behind, error or offline
	EventQuota     = "quota"     // a company passed its quota's warning level
	EventJobFailed = "job_failed"
	EventStorage   = "storage" // the appliance's disk array became degraded or failed, or clean again
	EventTape      = "tape"    // TapeAlert flags after a tape job; a drive cleaned, or not (tape.go)
)

// EventKinds lists every kind.
var EventKinds = []string{EventProtected, EventWarnings, EventBehind, EventError, EventOffline, EventRecovered, EventQuota, EventJobFailed, EventStorage, EventTape}

// Kinds a user receives until they choose: a company user their
// computers' events and their company's quota; an operator quota and
// failed jobs. A computer's technical contact receives every event of
// the computer, at once.
var (
	defaultUserEvents     = []string{EventProtected, EventWarnings, EventBehind, EventError, EventOffline, EventRecovered, EventQuota}
	defaultOperatorEvents = []string{EventQuota, EventJobFailed, EventStorage, EventTape}
)

// Timing of the notifier.
const (
	NotifyEvery = time.Minute
	// DefaultOfflineMail is how long a computer is out of contact before
	// the offline mail (Options.OfflineMail).
	DefaultOfflineMail = 24 * time.Hour
	// DigestHour is the hour (the vault's zone) the daily digest goes.
	DigestHour = 7
	// maxDigest bounds the events one user's digest keeps.
	maxDigest = 500
)

// notifyFile is the notifier's state in the mail directory.
const notifyFile = "notify.json"

// configFacts is what the notifier told of one configuration.
type configFacts struct {
	State       string   `json:"state"`
	Protected   bool     `json:"protected,omitempty"`    // "protected" was told (or there was a complete version when the notifier first looked)
	OfflineTold bool     `json:"offline_told,omitempty"` // the offline mail went for the current absence
	Warnings    []string `json:"warnings,omitempty"`     // the testing period's warnings found so far
	Examined    uint64   `json:"examined,omitempty"`     // the newest version examined
}

type digestItem struct {
	Time    time.Time `json:"time"`
	Subject string    `json:"subject"`
	Body    string    `json:"body"`
}

// notifyState is DATA/mail/notify.json.
type notifyState struct {
	Gen        uint64                  `json:"gen"`
	Since      time.Time               `json:"since"` // the first look: nothing before it is told
	Configs    map[string]*configFacts `json:"configs"`
	Quota      map[string]string       `json:"quota"` // company -> quota state told
	JobsSeen   time.Time               `json:"jobs_seen"`
	Storage    string                  `json:"storage,omitempty"` // the storage state told last (storage.go)
	Tape       string                  `json:"tape,omitempty"`    // the tape flags and cleaning notes told last (tape.go)
	Digests    map[string][]digestItem `json:"digests,omitempty"` // user -> events since the last digest
	LastDigest time.Time               `json:"last_digest"`
	// Pending is the outbox: messages decided, with their ids, not yet
	// in the queue.
	Pending []mail.Message `json:"pending,omitempty"`
}

type notifier struct {
	mu   sync.Mutex
	path string
	st   *notifyState // nil until loaded
	poke chan struct{}
	// warnings is the testing period's warnings by "computer/config",
	// for status (its own lock: status reads it while a pass runs).
	wmu      sync.Mutex
	warnings map[string][]string
	// In a pair the state lives in the catalog (pairmail.go): read at
	// each pass, saved through the log.
	loadFn func() (*notifyState, error)
	saveFn func(*notifyState) error
	saved  []byte // the state as last read or saved (pair): an unchanged one is not saved again
}

func newNotifier(dir string) *notifier {
	return &notifier{path: filepath.Join(dir, notifyFile), poke: make(chan struct{}, 1), warnings: map[string][]string{}}
}

// pokeNotify makes the notifier look now (after a commit).
func (v *Vault) pokeNotify() {
	select {
	case v.notes.poke <- struct{}{}:
	default:
	}
}

// warningsOf answers the testing period's warnings of a configuration.
func (n *notifier) warningsOf(computer, config string) []string {
	n.wmu.Lock()
	defer n.wmu.Unlock()
	return n.warnings[computer+"/"+config]
}

func (n *notifier) load() error {
	if n.st != nil && n.loadFn == nil {
		return nil
	}
	st := &notifyState{}
	var b []byte
	var err error
	if n.loadFn != nil {
		st, err = n.loadFn()
	} else {
		b, err = os.ReadFile(n.path)
	}
	switch {
	case n.loadFn != nil:
		if err != nil {
			return err
		}
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read %s: %w", notifyFile, err)
	case len(b) > 64<<20:
		return fmt.Errorf("%s is %d bytes, over the 64 MiB limit: move it aside (the notifier starts afresh, telling nothing already true)", notifyFile, len(b))
	default:
		if err := json.Unmarshal(b, st); err != nil {
			return fmt.Errorf("decode %s: %w: move it aside (the notifier starts afresh, telling nothing already true)", notifyFile, err)
		}
	}
	if st.Quota == nil {
		st.Quota = map[string]string{}
	}
	if st.Digests == nil {
		st.Digests = map[string][]digestItem{}
	}
	n.st = st
	n.wmu.Lock()
	for k, f := range st.Configs {
		n.warnings[k] = f.Warnings
	}
	n.wmu.Unlock()
	return nil
}

func (n *notifier) save() error {
	if n.saveFn != nil {
		return n.saveFn(n.st)
	}
	b, err := json.Marshal(n.st)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(n.path, b, 0o600); err != nil {
		return fmt.Errorf("save %s: %w", notifyFile, err)
	}
	return nil
}

// runNotify looks every NotifyEvery, or when poked, until ctx is done.
func (v *Vault) runNotify(ctx context.Context) {
	ready := false // in a pair: leading, with every earlier entry applied
	for {
		if v.pair != nil && !v.pair.node.IsLeader() {
			ready = false // only the pair's leader tells (pairmail.go)
		} else if v.pair != nil && !ready {
			// The old leader's last state applied first (a barrier), or
			// this pass would tell again what it told.
			bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := v.pair.node.WaitLeader(bctx)
			cancel()
			if ready = err == nil; ready {
				continue
			}
			v.log.Warn("mail notifier: take over", zap.Error(err))
		} else if err := v.NotifyOnce(ctx); err != nil && ctx.Err() == nil {
			v.log.Warn("mail notifier", zap.Error(err))
		}
		t := v.clk.NewTimer(NotifyEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-v.notes.poke:
			t.Stop()
		case <-t.C():
		}
	}
}

// event is one thing to tell.
type event struct {
	kind     string
	company  string
	computer string // "" for company and vault events
	subject  string
	body     string
}

// NotifyOnce makes one pass: queue what the outbox holds, find the changes
// of state since the last pass, and decide who hears of them.
func (v *Vault) NotifyOnce(ctx context.Context) error {
	n := v.notes
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.load(); err != nil {
		return err
	}
	if err := v.flushOutbox(); err != nil {
		return err
	}
	now := v.clk.Now()
	st := n.st
	first := st.Configs == nil
	if first {
		st.Configs, st.Since, st.JobsSeen, st.LastDigest = map[string]*configFacts{}, now, now, now
	}
	cps, err := v.Catalog.Computers("")
	if err != nil {
		return err
	}
	var evs []event
	seen := map[string]bool{}
	for _, cp := range cps {
		if cp.Revoked != nil {
			continue
		}
		cfgs, err := v.Catalog.Configs(cp.ID)
		if err != nil {
			return err
		}
		for _, cfg := range cfgs {
			key := cp.ID + "/" + cfg.Name
			seen[key] = true
			row, err := v.configStatus(cp, cfg, now)
			if err != nil {
				return err
			}
			f := st.Configs[key]
			if f == nil {
				f = &configFacts{}
				st.Configs[key] = f
				if first { // what is already true is not news
					f.State, f.Protected = row.State, !row.Covers.IsZero()
				}
			}
			evs = append(evs, v.configEvents(ctx, cp, cfg, row, f, now, first)...)
		}
	}
	for k := range st.Configs {
		if !seen[k] {
			delete(st.Configs, k)
		}
	}
	n.wmu.Lock()
	clear(n.warnings)
	for k, f := range st.Configs {
		n.warnings[k] = f.Warnings
	}
	n.wmu.Unlock()

	qs, err := v.Quotas(ctx, operator)
	if err != nil {
		return err
	}
	for _, q := range qs {
		was := st.Quota[q.Company]
		st.Quota[q.Company] = q.State
		if first || q.State == "ok" || q.State == was || (was == "over" && q.State == "warning") {
			continue
		}
		evs = append(evs, event{kind: EventQuota, company: q.Company,
			subject: fmt.Sprintf("Company %s: backup storage %s its quota", q.Company, map[string]string{"warning": "nears", "over": "is at"}[q.State]),
			body: fmt.Sprintf("Company %s uses %s of backup storage (after deduplication and compression); its warning level is %s and its quota %s.\n%s\n",
				q.Company, humanBytes(q.Used), humanBytes(q.Warn), humanBytes(q.Hard),
				map[string]string{"warning": "At the quota new backups are refused: remove data from the backups, shorten retention, or ask the provider for more.",
					"over": "New backups are refused now: remove data from the backups, shorten retention, or ask the provider for more."}[q.State])})
	}

	js, err := v.Jobs.List()
	if err != nil {
		return err
	}
	newest := st.JobsSeen
	for _, j := range js {
		if j.State != jobs.Failed || !j.Ended.After(st.JobsSeen) {
			continue
		}
		newest = maxTime(newest, j.Ended)
		evs = append(evs, event{kind: EventJobFailed,
			subject: fmt.Sprintf("Job %s failed", j.ID),
			body: fmt.Sprintf("The %s job %s (started by %s at %s) failed at %s:\n\n%s\n\nSee `vaultctl job show %s` on the vault.\n",
				j.Kind, j.ID, j.By, j.Started.UTC().Format(time.RFC3339), j.Ended.UTC().Format(time.RFC3339), j.Error, j.ID)})
	}
	st.JobsSeen = newest
	evs = append(evs, v.storageEvents(st, first)...)
	evs = append(evs, v.tapeEvents(st, first)...)

	if err := v.route(evs, now); err != nil {
		return err
	}
	v.digest(now)
	if len(st.Pending) > 0 {
		st.Gen++
	}
	if err := n.save(); err != nil {
		return err
	}
	return v.flushOutbox()
}

// storageEvents tells operators when the disk array becomes degraded or
// failed, and when it is clean again after that; a resync alone is no news.
// With a failed array the mail cannot be queued on the vault's own disk:
// the console, /health and the metrics say it.
func (v *Vault) storageEvents(st *notifyState, first bool) []event {
	si := v.Storage()
	if !si.Known || si.Stale {
		return nil
	}
	r := si.Report
	was := st.Storage
	switch {
	case first:
		st.Storage = r.State
		return nil
	case r.State == was || r.State == storagehealth.Resyncing:
		return nil
	case r.State == storagehealth.Clean && was != storagehealth.Degraded && was != storagehealth.Failed:
		st.Storage = r.State
		return nil
	}
	st.Storage = r.State
	e := event{kind: EventStorage, subject: "Vault storage " + r.State, body: r.Detail + "\n"}
	switch r.State {
	case storagehealth.Clean:
		e.subject = "Vault storage clean again"
		e.body += "Every disk of the array is in sync again.\n"
	case storagehealth.Degraded:
		e.body += "Backups and restores go on. Replace the missing disk: plug a blank one in, then `vaultctl disk replace DISK` on the appliance's console (or its front panel).\n"
	case storagehealth.Failed:
		e.body += "The vault accepts no backup and serves no data until the array is repaired.\n"
	}
	return []event{e}
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// configEvents compares one configuration's status with what was told.
func (v *Vault) configEvents(ctx context.Context, cp catalog.Computer, cfg wire.Config, row ConfigStatus, f *configFacts, now time.Time, first bool) []event {
	who := fmt.Sprintf("%s (%s) of %s", cp.Name, cp.ID, cp.Company)
	mk := func(kind, subject, body string) event {
		return event{kind: kind, company: cp.Company, computer: cp.ID, subject: subject,
			body: body + fmt.Sprintf("\nComputer %s, configuration %s (%s mode). State now: %s.\n", who, cfg.Name, orDefault(cfg.Mode, wire.ModeScheduled), row.State)}
	}
	var evs []event
	// The testing period: examine each new version.
	created := cfg.Created
	if created.IsZero() {
		created = cp.Enrolled
	}
	if now.Sub(created) < TestingPeriod {
		if ms, err := v.Catalog.Versions(cp.ID, cfg.Name); err == nil && len(ms) > 0 && ms[len(ms)-1].Seq != f.Examined {
			warns, err := v.examineConfig(ctx, cp, cfg, ms)
			if err != nil {
				v.log.Warn("examine a configuration in its testing period", zap.String("computer", cp.ID), zap.String("config", cfg.Name), zap.Error(err))
			} else {
				f.Examined = ms[len(ms)-1].Seq
				var fresh []string
				for _, w := range warns {
					if !slices.Contains(f.Warnings, w) {
						fresh = append(fresh, w)
					}
				}
				f.Warnings = warns
				if len(fresh) > 0 && !first {
					evs = append(evs, mk(EventWarnings, fmt.Sprintf("%s: configuration %s needs a look", cp.Name, cfg.Name),
						"The vault examines a new configuration during its first 24 hours. Please look at:\n\n- "+strings.Join(warns, "\n- ")+"\n"))
				}
			}
		}
	}
	if !f.Protected && !row.Covers.IsZero() {
		f.Protected = true
		paths := strings.Join(cfg.Paths, ", ")
		if cfg.Kind == wire.KindSystem {
			paths = "the system state (/etc, packages, disks, boot loader, crontabs)"
		} else if len(cfg.Command) > 0 {
			paths = "the output of " + strings.Join(cfg.Command, " ")
		}
		evs = append(evs, mk(EventProtected, fmt.Sprintf("%s is now protected (%s)", cp.Name, cfg.Name),
			fmt.Sprintf("The initial synchronization of %s completed: %s is now protected.\n\nIt covers %s: %s in %d version(s), the newest as of %s. Next synchronization: %s.\n",
				cfg.Name, cp.Name, paths, humanBytes(row.Protected), row.Versions, row.Covers.UTC().Format(time.RFC3339), row.NextRun.UTC().Format(time.RFC3339))))
	}
	was := f.State
	f.State = row.State
	bad := func(s string) bool { return s == StateBehind || s == StateError || s == StateOffline }
	switch {
	case row.State == StateOffline:
		seen := row.LastSeen
		if seen.IsZero() {
			seen = cp.Enrolled
		}
		if !f.OfflineTold && now.Sub(seen) >= v.offlineMail() {
			f.OfflineTold = true
			evs = append(evs, mk(EventOffline, fmt.Sprintf("%s has been offline since %s", cp.Name, seen.UTC().Format("2006-01-02 15:04 MST")),
				fmt.Sprintf("The vault has not heard from %s since %s (%s), so it is not being backed up. Check that it is on, connected, and that the vault-agent service runs.\n",
					cp.Name, seen.UTC().Format(time.RFC3339), now.Sub(seen).Round(time.Minute))))
		}
	case row.State == was:
	case row.State == StateBehind:
		evs = append(evs, mk(EventBehind, fmt.Sprintf("%s is behind schedule (%s)", cp.Name, cfg.Name),
			fmt.Sprintf("%s: %s. The newest restorable state is from %s.\n", cfg.Name, row.Detail, row.Covers.UTC().Format(time.RFC3339))))
	case row.State == StateError:
		evs = append(evs, mk(EventError, fmt.Sprintf("%s reports an error (%s)", cp.Name, cfg.Name),
			fmt.Sprintf("The agent on %s reports: %s\n", cp.Name, row.Detail)))
	case bad(was) && (was != StateOffline || f.OfflineTold):
		evs = append(evs, mk(EventRecovered, fmt.Sprintf("%s is back to %s (%s)", cp.Name, row.State, cfg.Name),
			fmt.Sprintf("%s was %s; it is %s again.\n", cp.Name, was, row.State)))
	}
	if row.State != StateOffline {
		f.OfflineTold = false
	}
	if first {
		return nil // the first look learns, and tells nothing already true
	}
	return evs
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (v *Vault) offlineMail() time.Duration {
	if v.opts.OfflineMail > 0 {
		return v.opts.OfflineMail
	}
	return DefaultOfflineMail
}

// wantsEvent says whether u receives events of kind.
func wantsEvent(u catalog.User, kind string) bool {
	evs := u.MailEvents
	if evs == nil {
		evs = defaultUserEvents
		if u.Kind == catalog.UserOperator {
			evs = defaultOperatorEvents
		}
	}
	return slices.Contains(evs, kind)
}

// route decides who hears of each event: the computer's technical contact
// at once, and every user who covers the computer (or company) and chose
// the kind, at once or in their digest. An address hears of an event once.
func (v *Vault) route(evs []event, now time.Time) error {
	if len(evs) == 0 {
		return nil
	}
	st := v.notes.st
	users, err := v.Catalog.Users()
	if err != nil {
		return err
	}
	contacts := map[string]string{}
	for i, e := range evs {
		told := map[string]bool{}
		if e.computer != "" {
			if _, ok := contacts[e.computer]; !ok {
				if cp, err := v.Catalog.Computer(e.computer); err == nil {
					contacts[e.computer] = cp.Contact
				}
			}
			if c := contacts[e.computer]; c != "" {
				told[c] = true
				v.pend(e, c, i, now)
			}
		}
		for _, u := range users {
			if u.Email == "" || told[u.Email] || !wantsEvent(u, e.kind) {
				continue
			}
			p := principalOf(u)
			switch {
			case (e.kind == EventJobFailed || e.kind == EventStorage || e.kind == EventTape) && u.Kind != catalog.UserOperator:
				continue
			case e.company != "" && !p.Covers(e.company, e.computer):
				continue
			}
			told[u.Email] = true
			if u.MailDigest {
				d := append(st.Digests[u.Name], digestItem{Time: now, Subject: e.subject, Body: e.body})
				st.Digests[u.Name] = d[max(0, len(d)-maxDigest):]
				continue
			}
			v.pend(e, u.Email, i, now)
		}
	}
	return nil
}

// pend adds a message to the outbox under an id fixed by the pass, the
// event's place in it, and the address.
func (v *Vault) pend(e event, to string, i int, now time.Time) {
	st := v.notes.st
	h := sha256.Sum256(fmt.Appendf(nil, "%d\x00%d\x00%s", st.Gen, i, to))
	st.Pending = append(st.Pending, mail.Message{ID: fmt.Sprintf("n%d-%s", st.Gen, hex.EncodeToString(h[:8])),
		Kind: e.kind, To: to, Subject: e.subject, Body: e.body + mailFooter, Created: now})
}

const mailFooter = "\n-- \nvaultnode. Choose what you receive on the portal's Account page (or ask whoever manages your users).\n"

// digest queues each user's daily digest once the day's DigestHour has
// passed since the last.
func (v *Vault) digest(now time.Time) {
	st := v.notes.st
	zone := v.opts.Zone
	if zone == nil {
		zone = time.Local
	}
	l := st.LastDigest.In(zone)
	next := time.Date(l.Year(), l.Month(), l.Day(), DigestHour, 0, 0, 0, zone)
	if !next.After(l) {
		next = next.AddDate(0, 0, 1)
	}
	if now.Before(next) {
		return
	}
	st.LastDigest = now
	users, err := v.Catalog.Users()
	if err != nil {
		v.log.Warn("daily digest", zap.Error(err))
		return
	}
	day := now.In(zone).Format("2006-01-02")
	for _, u := range users {
		items := st.Digests[u.Name]
		if len(items) == 0 || u.Email == "" {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%d event(s) since the last digest:\n\n", len(items))
		for _, it := range items {
			fmt.Fprintf(&b, "== %s (%s)\n%s\n", it.Subject, it.Time.In(zone).Format("2006-01-02 15:04"), it.Body)
		}
		h := sha256.Sum256([]byte(u.Name + "\x00" + day))
		st.Pending = append(st.Pending, mail.Message{ID: "d-" + hex.EncodeToString(h[:10]), Kind: "digest", To: u.Email,
			Subject: fmt.Sprintf("vaultnode daily digest for %s: %d event(s)", day, len(items)), Body: b.String() + mailFooter, Created: now})
	}
	clear(st.Digests)
}

// flushOutbox queues the outbox's messages (a message queued before is not
// queued again: its id is known) and empties it.
func (v *Vault) flushOutbox() error {
	st := v.notes.st
	if len(st.Pending) == 0 {
		return nil
	}
	for _, m := range st.Pending {
		if _, err := v.Mail.Add(m); err != nil {
			v.log.Warn("queue mail", zap.String("to", m.To), zap.String("kind", m.Kind), zap.Error(err))
		}
	}
	st.Pending = nil
	return v.notes.save()
}
