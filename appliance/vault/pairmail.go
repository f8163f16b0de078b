package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/mail"
)

// Mail in a pair (docs/pair.md, "Mail"). Only the leader looks for events
// and sends; what it decides and what it did goes through the raft log, so
// a new leader carries on where the old one stopped:
//
//   - the notifier's state (what it told, its outbox, the digests) is a
//     KindNotifyState command, kept in the catalog (so in its snapshots);
//     the notifier runs on the leader alone and reads it from there;
//   - every change of the mail queue's files (a message queued, marked
//     sending, sent, failed, queued again) is a KindMailOp command that
//     each member applies to its own DATA/mail before the catalog records
//     the entry; the SMTP settings likewise (KindMailSettings);
//   - the sender runs on the leader alone; when a member starts to lead it
//     first turns the messages the old leader left "sending" into
//     "uncertain" (through the log), as a restart does.
//
// A message's data ends only once its "sending" mark is committed, so a
// message is sent at most once whatever fails; one the old leader had
// queued and not yet tried is sent by the new one; only a message whose
// end went out while the leader died is "uncertain" (maybe arrived, never
// sent again).

// Command kinds of mail in a pair.
const (
	KindNotifyState  catalog.Kind = "notify_state"
	KindMailOp       catalog.Kind = "mail_op"
	KindMailSettings catalog.Kind = "mail_settings"
)

var (
	bucketNotify = []byte("notify") // "state": the notifier's notifyState
	keyNotify    = []byte("state")
)

func init() {
	catalog.RegisterKind(KindNotifyState, func(tx *bbolt.Tx, payload []byte) (any, error) {
		var st notifyState
		if err := json.Unmarshal(payload, &st); err != nil {
			return nil, fmt.Errorf("%w: notifier state: %v", catalog.ErrInvalid, err)
		}
		b, err := tx.CreateBucketIfNotExists(bucketNotify)
		if err != nil {
			return nil, err
		}
		return nil, b.Put(keyNotify, payload)
	})
	catalog.RegisterKind(KindMailOp, func(tx *bbolt.Tx, payload []byte) (any, error) {
		op, err := decodeMailOp(payload)
		if err != nil {
			return nil, err
		}
		return nil, keepMailOp(tx, op)
	})
	catalog.RegisterKind(KindMailSettings, func(tx *bbolt.Tx, payload []byte) (any, error) {
		var s mail.Settings
		if err := json.Unmarshal(payload, &s); err != nil {
			return nil, fmt.Errorf("%w: mail settings: %v", catalog.ErrInvalid, err)
		}
		if _, err := s.Normalize(); err != nil {
			return nil, err
		}
		b, err := tx.CreateBucketIfNotExists(bucketMail)
		if err != nil {
			return nil, err
		}
		return nil, b.Put(keyMailSettings, payload)
	})
}

// The catalog keeps the mail queue's state as the log left it, so that a
// member brought up to date by a catalog snapshot rewrites its DATA/mail
// from there (pairsnap.go): bucketMail holds the settings command's
// payload; bucketMailQueue each message's last change (id -> mail.Op).
var (
	bucketMail      = []byte("mail")
	keyMailSettings = []byte("settings")
	bucketMailQueue = []byte("mail_queue")
)

// keepMailOp records op's message in the catalog; a done message is
// dropped KeepDone after it ended (as each member prunes DATA/mail/done),
// measured from the latest message's end: the same on every member.
func keepMailOp(tx *bbolt.Tx, op mail.Op) error {
	b, err := tx.CreateBucketIfNotExists(bucketMailQueue)
	if err != nil {
		return err
	}
	if op.Where == "queue" {
		if old := b.Get([]byte(op.Msg.ID)); old != nil {
			var o mail.Op
			if json.Unmarshal(old, &o) == nil && o.Where == "done" {
				return nil // a message done stays done (mail.Queue.Apply)
			}
		}
	}
	raw, err := json.Marshal(op)
	if err != nil {
		return err
	}
	if err := b.Put([]byte(op.Msg.ID), raw); err != nil {
		return err
	}
	if op.Where != "done" || op.Msg.Done.IsZero() {
		return nil
	}
	var old [][]byte
	b.ForEach(func(k, val []byte) error {
		var o mail.Op
		if json.Unmarshal(val, &o) == nil && o.Where == "done" && op.Msg.Done.Sub(o.Msg.Done) > mail.KeepDone {
			old = append(old, slices.Clone(k))
		}
		return nil
	})
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func decodeMailOp(b []byte) (mail.Op, error) {
	var op mail.Op
	if err := json.Unmarshal(b, &op); err != nil {
		return op, fmt.Errorf("%w: mail change: %v", catalog.ErrInvalid, err)
	}
	if op.Where != "queue" && op.Where != "done" {
		return op, fmt.Errorf("%w: mail change to %q", catalog.ErrInvalid, op.Where)
	}
	if len(op.Msg.Body) > mail.MaxBody {
		return op, fmt.Errorf("%w: mail body of %d bytes", catalog.ErrInvalid, len(op.Msg.Body))
	}
	return op, nil
}

// mailThrough is the queue's SetThrough in a pair: the change goes through
// the log (on the leader only) and is applied by beforeApplyMail.
func (v *Vault) mailThrough(op mail.Op) error {
	cmd, err := catalog.NewCommand(KindMailOp, op)
	if err != nil {
		return err
	}
	_, err = v.pair.node.Submit(cmd)
	return err
}

// beforeApplyMail applies a mail command of the log to this member's
// DATA/mail, once (an entry the catalog applied before is skipped: an old
// "queued" must not come back after "sent").
func (v *Vault) beforeApplyMail(index uint64, cmd catalog.Command) {
	if cmd.Kind != KindMailOp && cmd.Kind != KindMailSettings {
		return
	}
	if done, err := v.Catalog.AppliedIndex(); err != nil || done >= index {
		return
	}
	select {
	case <-v.pair.gc.storeReady: // the mail queue opens before it
	case <-v.pair.gc.quit:
		return
	}
	var err error
	switch cmd.Kind {
	case KindMailOp:
		var op mail.Op
		if op, err = decodeMailOp(cmd.Payload); err == nil {
			err = v.Mail.Apply(op)
		}
	case KindMailSettings:
		err = v.applyMailSettings(cmd.Payload)
	}
	if err != nil {
		v.log.Warn("apply a mail change of the log", zap.Uint64("index", index), zap.String("kind", string(cmd.Kind)), zap.Error(err))
	}
}

// applyMailSettings writes a mail_settings command's payload to this
// member's DATA/mail.
func (v *Vault) applyMailSettings(payload []byte) error {
	var s mail.Settings
	if err := json.Unmarshal(payload, &s); err != nil {
		return err
	}
	_, err := mail.SaveSettings(v.Mail.Dir(), s)
	return err
}

// smtpPasswordAD binds a sealed SMTP password to its use.
var smtpPasswordAD = []byte("smtp password")

// sealPassword seals the settings' password with the master key (which
// both members of a pair hold, and a witness does not): the log, the
// catalog's snapshots and DATA/mail/smtp.json hold it sealed.
func (v *Vault) sealPassword(s mail.Settings) mail.Settings {
	if s.Password == "" {
		return s
	}
	nonce := randomBytes(v.master.NonceSize())
	s.SealedPassword = v.master.Seal(nonce, nonce, []byte(s.Password), smtpPasswordAD)
	s.Password = ""
	return s
}

// openPassword is the mail queue's unseal.
func (v *Vault) openPassword(sealed []byte) (string, error) {
	ns := v.master.NonceSize()
	if len(sealed) < ns {
		return "", fmt.Errorf("sealed SMTP password of %d bytes", len(sealed))
	}
	pw, err := v.master.Open(nil, sealed[:ns], sealed[ns:], smtpPasswordAD)
	if err != nil {
		return "", fmt.Errorf("the sealed SMTP password does not open with this vault's master key")
	}
	return string(pw), nil
}

// sealMailFile seals a password DATA/mail/smtp.json holds in clear (saved
// before passwords were sealed).
func (v *Vault) sealMailFile() error {
	s, err := mail.LoadSettings(v.Mail.Dir())
	if err != nil || s.Password == "" {
		return nil
	}
	_, err = mail.SaveSettings(v.Mail.Dir(), v.sealPassword(s))
	return err
}

// saveMailSettings saves the SMTP settings, the password sealed: through
// the log in a pair.
func (v *Vault) saveMailSettings(s mail.Settings) error {
	s = v.sealPassword(s)
	if v.pair == nil {
		_, err := mail.SaveSettings(v.Mail.Dir(), s)
		return err
	}
	s, err := s.Normalize()
	if err != nil {
		return err
	}
	cmd, err := catalog.NewCommand(KindMailSettings, s)
	if err != nil {
		return err
	}
	_, err = v.pair.node.Submit(cmd)
	return err
}

// loadNotifyState reads the notifier's state from the catalog (a pair);
// a zero state when none was saved yet.
func (v *Vault) loadNotifyState() (*notifyState, error) {
	st := &notifyState{}
	err := v.Catalog.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketNotify)
		if b == nil {
			return nil
		}
		if raw := b.Get(keyNotify); raw != nil {
			v.notes.saved = append(v.notes.saved[:0], raw...)
			return json.Unmarshal(raw, st)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the notifier's state: %w", err)
	}
	return st, nil
}

// saveNotifyState commits the notifier's state through the log.
func (v *Vault) saveNotifyState(st *notifyState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if bytes.Equal(b, v.notes.saved) {
		return nil // a pass that changed nothing adds nothing to the log
	}
	cmd, err := catalog.NewCommand(KindNotifyState, json.RawMessage(b))
	if err != nil {
		return fmt.Errorf("save the notifier's state: %w", err)
	}
	if _, err := v.pair.node.Submit(cmd); err != nil {
		return fmt.Errorf("save the notifier's state: %w", err)
	}
	v.notes.saved = b
	return nil
}

// runMail runs the mail queue's sender: always on a single vault; in a
// pair, only while this member leads, after recovering what the previous
// leader left.
func (v *Vault) runMail(ctx context.Context) {
	if v.pair == nil {
		v.Mail.Run(ctx)
		return
	}
	var stop context.CancelFunc
	done := make(chan struct{})
	close(done)
	defer func() {
		if stop != nil {
			stop()
		}
		<-done
	}()
	for {
		leads := v.pair.node.IsLeader()
		switch {
		case leads && stop == nil:
			// Every entry of the old leader's applied first (a barrier):
			// else a "sending" mark still to apply would be overwritten
			// by the recovery's "queued" and the message sent twice.
			bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := v.pair.node.WaitLeader(bctx)
			cancel()
			if err != nil {
				v.log.Warn("take over the mail queue", zap.Error(err))
				break
			}
			if err := v.Mail.Recover(); err != nil {
				v.log.Warn("take over the mail queue", zap.Error(err))
				break
			}
			sctx, cancel := context.WithCancel(ctx)
			stop = cancel
			done = make(chan struct{})
			go func() { defer close(done); v.Mail.Run(sctx) }()
			v.log.Info("leading: this member sends the pair's mail")
		case !leads && stop != nil:
			stop()
			<-done
			stop = nil
			v.log.Info("no longer leading: another member sends the pair's mail")
		}
		t := v.clk.NewTimer(500 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}
