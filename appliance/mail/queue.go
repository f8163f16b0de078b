package mail

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	gomail "github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"
	"go.uber.org/zap"

	"vaultnode/internal/atomicfile"
	"vaultnode/internal/clock"
)

// States of a message.
const (
	StateQueued    = "queued"    // waiting for its next attempt
	StateSending   = "sending"   // its body went to the server; the end of it is being sent
	StateSent      = "sent"      // the server answered 250
	StateFailed    = "failed"    // refused for good (5xx), or still not sent after MaxAge
	StateUncertain = "uncertain" // a crash came between "sending" and the 250: never sent again
)

// Retries: the n-th failed attempt waits RetryBase·2^(n-1), at most
// RetryMax; a message not sent MaxAge after it was queued fails. Done
// messages are kept KeepDone for `vaultctl mail queue`.
const (
	RetryBase = time.Minute
	RetryMax  = time.Hour
	MaxAge    = 72 * time.Hour
	KeepDone  = 30 * 24 * time.Hour
	// MaxBody bounds a message's text.
	MaxBody = 256 << 10
	// sendTimeout bounds one connection's dial, and each command.
	sendTimeout = time.Minute
)

// Message is one e-mail to one recipient, with its delivery state.
type Message struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind,omitempty"` // what it tells (an event kind, "test", "digest")
	To      string    `json:"to"`
	Subject string    `json:"subject"`
	Body    string    `json:"body"`
	Created time.Time `json:"created"`

	State     string    `json:"state"`
	Attempts  int       `json:"attempts,omitempty"`
	NextTry   time.Time `json:"next_try,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	Done      time.Time `json:"done,omitzero"` // when it was sent, failed or found uncertain
}

var idRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// Queue is the durable outbound queue in one directory: queue/ID.json for
// messages waiting or being sent, done/ID.json for sent, failed and
// uncertain ones. Each state change is one synced file write (or rename).
type Queue struct {
	dir string
	clk clock.Clock
	log *zap.Logger

	mu        sync.Mutex // file changes, and one sending pass at a time
	poke      chan struct{}
	lastPrune time.Time // done/ is pruned at most hourly
	// cmu guards changed, closed (and replaced) at every attempt's
	// outcome: Wait's wake-up.
	cmu     sync.Mutex
	changed chan struct{}
	// sent is told the id of each message the server accepted (tests).
	sent func(id string)
	// marked, if set, runs after a message is marked sending and before
	// the end of its data goes out (tests hold the window open).
	marked func(Message)
	// through, when set, carries every change of the files (SetThrough).
	through func(Op) error
	// unseal opens a sealed SMTP password (SetUnseal).
	unseal func(sealed []byte) (string, error)
}

// Op is one change of the queue's files: m written to queue/ or, for
// done/, m's final state (and queue/ID.json removed).
type Op struct {
	Where string  `json:"where"` // "queue" or "done"
	Msg   Message `json:"msg"`
}

// SetThrough makes every later change of the queue's files go through fn
// (a pair's replicated log, docs/pair.md "Mail"), which must apply it on
// this member too (Apply) before it returns; an error from fn is the
// change's error: a message is never marked sending, so never sent,
// unless fn carried that mark. Call it before Run.
func (q *Queue) SetThrough(fn func(Op) error) { q.through = fn }

// Apply makes one change of the files, as the log carries it to every
// member. A message already done stays done: a queue/ write for it is
// ignored.
func (q *Queue) Apply(op Op) error {
	if !idRE.MatchString(op.Msg.ID) {
		return fmt.Errorf("%w message id %q", ErrInvalid, op.Msg.ID)
	}
	switch op.Where {
	case "queue":
		if _, err := os.Stat(q.sub("done", op.Msg.ID+".json")); err == nil {
			return nil
		}
		return q.writeHere("queue", op.Msg)
	case "done":
		err := q.finishHere(op.Msg)
		q.broadcast()
		return err
	}
	return fmt.Errorf("%w mail change %q", ErrInvalid, op.Where)
}

// Open opens (or makes) the queue in dir. A message found "sending" is
// one whose delivery a crash interrupted: it becomes "uncertain" and is
// never sent again. Queued messages are due at once: a restart is a reason
// to try again.
func Open(dir string, clk clock.Clock, log *zap.Logger) (*Queue, error) {
	if log == nil {
		log = zap.NewNop()
	}
	q := &Queue{dir: dir, clk: clk, log: log, poke: make(chan struct{}, 1), changed: make(chan struct{})}
	for _, d := range []string{q.sub("queue"), q.sub("done")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create mail queue: %w", err)
		}
	}
	if err := q.recoverLocked(); err != nil {
		return nil, err
	}
	return q, nil
}

// Recover does what Open does to messages a sender left: "sending" ones
// become "uncertain" (never sent again), queued ones are due at once. A
// member of a pair calls it, through the log, when it starts to lead: the
// old leader's interrupted message is never sent twice.
func (q *Queue) Recover() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.recoverLocked()
}

func (q *Queue) recoverLocked() error {
	log, clk := q.log, q.clk
	ms, err := q.read("queue")
	if err != nil {
		return err
	}
	now := clk.Now()
	for _, m := range ms {
		switch m.State {
		case StateSending:
			m.State, m.Done = StateUncertain, now
			m.LastError = "vaultd stopped after the message's data went out and before the server's answer: it may or may not have arrived, and is not sent again"
			log.Warn("mail of uncertain delivery: not sent again", zap.String("id", m.ID), zap.String("to", m.To))
			if err := q.finish(m); err != nil {
				return err
			}
		case StateQueued:
			if m.NextTry.After(now) {
				m.NextTry = now
				if err := q.write("queue", m); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// Dir is the queue's directory.
func (q *Queue) Dir() string { return q.dir }

func (q *Queue) sub(parts ...string) string {
	return filepath.Join(append([]string{q.dir}, parts...)...)
}

func (q *Queue) write(where string, m Message) error {
	if q.through != nil {
		return q.through(Op{Where: where, Msg: m})
	}
	return q.writeHere(where, m)
}

func (q *Queue) writeHere(where string, m Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(q.sub(where, m.ID+".json"), b, 0o600); err != nil {
		return fmt.Errorf("write mail %s: %w", m.ID, err)
	}
	return nil
}

// finish moves m to done/ in its final state: written there first, then
// removed from queue/, so a crash between leaves both, and done/ wins.
func (q *Queue) finish(m Message) error {
	if q.through != nil {
		return q.through(Op{Where: "done", Msg: m})
	}
	return q.finishHere(m)
}

func (q *Queue) finishHere(m Message) error {
	if err := q.writeHere("done", m); err != nil {
		return err
	}
	if err := os.Remove(q.sub("queue", m.ID+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove sent mail %s from the queue: %w", m.ID, err)
	}
	return atomicfile.SyncDir(q.sub("queue"))
}

func decode(path string) (Message, error) {
	var m Message
	b, err := readBounded(path)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w %s: %v", ErrCorrupt, path, err)
	}
	if !idRE.MatchString(m.ID) || filepath.Base(path) != m.ID+".json" {
		return m, fmt.Errorf("%w %s: names message %q", ErrCorrupt, path, m.ID)
	}
	return m, nil
}

// read lists the messages of queue/ or done/, oldest first. A file that
// cannot be read is logged and left alone.
func (q *Queue) read(where string) ([]Message, error) {
	ents, err := os.ReadDir(q.sub(where))
	if err != nil {
		return nil, fmt.Errorf("read mail queue: %w", err)
	}
	var out []Message
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		m, err := decode(q.sub(where, e.Name()))
		if err != nil {
			q.log.Warn("unreadable mail file left alone", zap.String("file", e.Name()), zap.Error(err))
			continue
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Message) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Add queues m unless a message of its id is already queued or done: ids
// are chosen by the caller so that queuing the same message twice (after
// a crash) sends it once. It answers whether m was new.
func (q *Queue) Add(m Message) (bool, error) {
	if !idRE.MatchString(m.ID) {
		return false, fmt.Errorf("%w message id %q", ErrInvalid, m.ID)
	}
	if _, err := ParseAddress(m.To); err != nil {
		return false, err
	}
	if len(m.Body) > MaxBody || len(m.Subject) > 998 || strings.ContainsAny(m.Subject, "\r\n") {
		return false, fmt.Errorf("%w message %s: subject of %d bytes or body of %d bytes (limits 998 and %d, subject on one line)", ErrInvalid, m.ID, len(m.Subject), len(m.Body), MaxBody)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, where := range []string{"queue", "done"} {
		if _, err := os.Stat(q.sub(where, m.ID+".json")); err == nil {
			return false, nil
		}
	}
	if m.Created.IsZero() {
		m.Created = q.clk.Now()
	}
	m.State, m.Attempts, m.NextTry, m.LastError, m.Done = StateQueued, 0, m.Created, "", time.Time{}
	if err := q.write("queue", m); err != nil {
		return false, err
	}
	q.Poke()
	return true, nil
}

// Poke makes Run look at the queue now.
func (q *Queue) Poke() {
	select {
	case q.poke <- struct{}{}:
	default:
	}
}

// Get reads one message.
func (q *Queue) Get(id string) (Message, error) {
	if !idRE.MatchString(id) {
		return Message{}, fmt.Errorf("%w message id %q", ErrInvalid, id)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	m, err := decode(q.sub("done", id+".json"))
	if errors.Is(err, os.ErrNotExist) {
		m, err = decode(q.sub("queue", id+".json"))
	}
	return m, err
}

// List answers the queued messages and the done ones, oldest first.
func (q *Queue) List() ([]Message, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	a, err := q.read("queue")
	if err != nil {
		return nil, err
	}
	b, err := q.read("done")
	return append(a, b...), err
}

func (q *Queue) changedCh() <-chan struct{} {
	q.cmu.Lock()
	defer q.cmu.Unlock()
	return q.changed
}

func (q *Queue) broadcast() {
	q.cmu.Lock()
	close(q.changed)
	q.changed = make(chan struct{})
	q.cmu.Unlock()
}

// Wait waits until message id has had an attempt (sent, failed,
// uncertain, or queued again with an error) or ctx ends, and answers it.
func (q *Queue) Wait(ctx context.Context, id string) (Message, error) {
	for {
		ch := q.changedCh()
		m, err := q.Get(id)
		if err != nil || m.State != StateQueued || m.Attempts > 0 {
			return m, err
		}
		select {
		case <-ctx.Done():
			return m, nil
		case <-ch:
		}
	}
}

// Run sends due messages until ctx is done, waking at the next due time
// or when Add pokes it; it also forgets done messages older than KeepDone.
func (q *Queue) Run(ctx context.Context) {
	for {
		next := q.SendDue(ctx)
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(q.clk.Now()), time.Second)
		}
		t := q.clk.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-q.poke:
			t.Stop()
		case <-t.C():
		}
	}
}

// SendDue makes one pass: every due message over one connection. It
// answers when the next queued message is due (zero: none queued).
func (q *Queue) SendDue(ctx context.Context) time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	ms, err := q.read("queue")
	if err != nil {
		q.log.Error("read mail queue", zap.Error(err))
		return q.clk.Now().Add(RetryBase)
	}
	now := q.clk.Now()
	var due []Message
	for _, m := range ms {
		if m.State == StateQueued && !m.NextTry.After(now) {
			due = append(due, m)
		}
	}
	if now.Sub(q.lastPrune) >= time.Hour {
		q.pruneDone(now)
		q.lastPrune = now
	}
	if len(due) > 0 {
		q.deliver(ctx, due)
		q.broadcast()
	}
	var next time.Time
	if ms, err = q.read("queue"); err == nil {
		for _, m := range ms {
			if m.State == StateQueued && (next.IsZero() || m.NextTry.Before(next)) {
				next = m.NextTry
			}
		}
	}
	return next
}

func (q *Queue) pruneDone(now time.Time) {
	done, err := q.read("done")
	if err != nil {
		return
	}
	for _, m := range done {
		if now.Sub(m.Done) > KeepDone {
			os.Remove(q.sub("done", m.ID+".json"))
		}
	}
}

// deliver sends ms over one connection; each message ends sent, failed,
// uncertain, or queued again with its next attempt.
func (q *Queue) deliver(ctx context.Context, ms []Message) {
	s, err := q.Settings()
	if err != nil {
		for _, m := range ms {
			q.retry(m, err)
		}
		return
	}
	c, err := client(s)
	if err != nil {
		for _, m := range ms {
			q.retry(m, err)
		}
		return
	}
	dctx, cancel := context.WithTimeout(ctx, sendTimeout)
	sc, err := c.DialToSMTPClientWithContext(dctx)
	cancel()
	if err != nil {
		err = fmt.Errorf("connect to %s:%d: %w", s.Host, s.Port, err)
		q.log.Warn("mail not sent", zap.Error(err), zap.Int("messages", len(ms)))
		for _, m := range ms {
			q.retry(m, err)
		}
		return
	}
	defer sc.Close()
	for i, m := range ms {
		if ctx.Err() != nil {
			return // stays queued, due
		}
		broken := q.sendOne(sc, s, m)
		if broken != nil {
			for _, rest := range ms[i+1:] {
				q.retry(rest, broken)
			}
			return
		}
	}
	sc.Quit()
}

// sendOne sends m over sc and records its outcome; it answers an error
// when the connection can carry no more.
func (q *Queue) sendOne(sc *smtp.Client, s Settings, m Message) error {
	gm := gomail.NewMsg()
	if err := gm.From(s.From); err != nil {
		q.fail(m, fmt.Errorf("sender %q: %w", s.From, err))
		return nil
	}
	if err := gm.To(m.To); err != nil {
		q.fail(m, fmt.Errorf("recipient %q: %w", m.To, err))
		return nil
	}
	gm.Subject(m.Subject)
	gm.SetMessageIDWithValue(m.ID + "@vaultnode")
	gm.SetDateWithValue(m.Created)
	gm.SetBodyString(gomail.TypeTextPlain, m.Body)

	sc.UpdateDeadline(sendTimeout)
	refused := func(step string, err error) error {
		var te *textproto.Error
		if errors.As(err, &te) {
			err = fmt.Errorf("%s: %w", step, err)
			if te.Code >= 500 {
				q.fail(m, err)
			} else {
				q.retry(m, err)
			}
			sc.Reset()
			return nil
		}
		err = fmt.Errorf("%s: %w", step, err)
		q.retry(m, err)
		return err
	}
	if err := sc.Mail(s.From); err != nil {
		return refused("MAIL FROM", err)
	}
	if err := sc.Rcpt(m.To); err != nil {
		return refused("RCPT TO", err)
	}
	w, err := sc.Data()
	if err != nil {
		return refused("DATA", err)
	}
	if _, err := gm.WriteTo(w); err != nil {
		q.retry(m, fmt.Errorf("write message: %w", err))
		return err // the end of the data never went out: the server keeps nothing
	}
	// The whole body is with the server (or in our buffer); only the line
	// that ends it is left. Mark the message before sending that line: from
	// here on a crash leaves it uncertain, never sent twice.
	m.State = StateSending
	if err := q.write("queue", m); err != nil {
		m.State = StateQueued
		q.retry(m, err)
		return err // close without the end of the data: the server keeps nothing
	}
	if q.marked != nil {
		q.marked(m)
	}
	if err := w.Close(); err != nil {
		var te *textproto.Error
		if !errors.As(err, &te) {
			// No answer: it may have arrived. Never again.
			m.State, m.Done = StateUncertain, q.clk.Now()
			m.LastError = fmt.Sprintf("the connection failed while waiting for the server's answer to the message: %v; it may or may not have arrived, and is not sent again", err)
			q.log.Warn("mail of uncertain delivery: not sent again", zap.String("id", m.ID), zap.String("to", m.To), zap.Error(err))
			q.finishLogged(m)
			return err
		}
		m.State = StateQueued
		return refused("end of data", err)
	}
	m.State, m.Done, m.LastError = StateSent, q.clk.Now(), ""
	q.finishLogged(m)
	q.log.Info("mail sent", zap.String("id", m.ID), zap.String("kind", m.Kind), zap.String("to", m.To))
	if q.sent != nil {
		q.sent(m.ID)
	}
	return sc.Reset()
}

func (q *Queue) finishLogged(m Message) {
	if err := q.finish(m); err != nil {
		q.log.Error("record mail state", zap.String("id", m.ID), zap.String("state", m.State), zap.Error(err))
	}
}

// retry queues m again after its backoff, or fails it past MaxAge.
func (q *Queue) retry(m Message, err error) {
	now := q.clk.Now()
	if m.State == StateSending {
		m.State = StateQueued
	}
	m.Attempts++
	m.LastError = err.Error()
	if now.Sub(m.Created) >= MaxAge {
		q.fail(m, fmt.Errorf("not sent within %s: %w", MaxAge, err))
		return
	}
	wait := RetryBase << min(m.Attempts-1, 10)
	m.NextTry = now.Add(min(wait, RetryMax))
	if err := q.write("queue", m); err != nil {
		q.log.Error("record mail retry", zap.String("id", m.ID), zap.Error(err))
	}
}

func (q *Queue) fail(m Message, err error) {
	m.State, m.Done, m.LastError = StateFailed, q.clk.Now(), err.Error()
	q.log.Warn("mail failed for good", zap.String("id", m.ID), zap.String("to", m.To), zap.Error(err))
	q.finishLogged(m)
}

// client builds the go-mail client of s.
func client(s Settings) (*gomail.Client, error) {
	tc := &tls.Config{ServerName: s.Host, MinVersion: tls.VersionTLS12}
	if s.CA != "" {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(s.CA))
		tc.RootCAs = pool
	}
	opts := []gomail.Option{gomail.WithPort(s.Port), gomail.WithTimeout(sendTimeout), gomail.WithTLSConfig(tc), gomail.WithHELO("vaultnode")}
	switch s.Security {
	case SecurityTLS:
		opts = append(opts, gomail.WithSSL())
	case SecurityNone:
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	default:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	}
	if s.Username != "" {
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover), gomail.WithUsername(s.Username), gomail.WithPassword(s.Password))
	} else {
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthNoAuth))
	}
	c, err := gomail.NewClient(s.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("mail client for %s: %w", s.Host, err)
	}
	return c, nil
}
