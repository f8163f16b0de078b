package vault

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/mail"
	"vaultnode/internal/wire"
)

// Mail operations (docs/api.md, "E-mail"): the SMTP settings and a test
// message (operators), and each user's choice of what they receive.

// MailInfo is the SMTP settings (never the password) and the queue.
type MailInfo struct {
	Settings    *mail.Settings `json:"settings,omitempty"` // nil: not configured
	HasPassword bool           `json:"has_password,omitempty"`
	Messages    []mail.Message `json:"messages"` // queued, then done (sent, failed, uncertain), oldest first; bodies left out
}

func mailErr(err error) error {
	if errors.Is(err, mail.ErrInvalid) || errors.Is(err, mail.ErrNotConfigured) || errors.Is(err, catalog.ErrInvalid) {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	return err
}

// MailInfo answers the settings and the queue.
func (v *Vault) MailInfo(ctx context.Context, p *Principal) (MailInfo, error) {
	if !p.Has(CapOperate) {
		return MailInfo{}, forbid(p, CapOperate)
	}
	out := MailInfo{Messages: []mail.Message{}}
	s, err := mail.LoadSettings(v.Mail.Dir())
	if err == nil {
		out.HasPassword, s.Password, s.SealedPassword = s.Password != "" || len(s.SealedPassword) > 0, "", nil
		out.Settings = &s
	} else if !errors.Is(err, mail.ErrNotConfigured) {
		return out, err
	}
	ms, err := v.Mail.List()
	if err != nil {
		return out, err
	}
	for _, m := range ms {
		m.Body = ""
		out.Messages = append(out.Messages, m)
	}
	return out, nil
}

// SetMail saves the SMTP settings.
func (v *Vault) SetMail(ctx context.Context, p *Principal, s mail.Settings) (MailInfo, error) {
	if !p.Has(CapOperate) {
		return MailInfo{}, forbid(p, CapOperate)
	}
	s.SealedPassword = nil // only the vault seals
	if err := v.saveMailSettings(s); err != nil {
		return MailInfo{}, mailErr(err)
	}
	v.Mail.Poke()
	return v.MailInfo(ctx, p)
}

// TestMailRequest sends a test message.
type TestMailRequest struct {
	To string `json:"to"`
}

// TestMail queues a test message to req.To and waits (up to a minute, or
// the request's end) for its first attempt: the answer says whether the
// server took it, or why not.
func (v *Vault) TestMail(ctx context.Context, p *Principal, req TestMailRequest) (mail.Message, error) {
	if !p.Has(CapOperate) {
		return mail.Message{}, forbid(p, CapOperate)
	}
	if _, err := mail.LoadSettings(v.Mail.Dir()); err != nil {
		return mail.Message{}, mailErr(err)
	}
	now := v.clk.Now()
	m := mail.Message{ID: "t-" + hex.EncodeToString(randomBytes(10)), Kind: "test", To: req.To, Created: now,
		Subject: "vaultnode test message",
		Body: fmt.Sprintf("This is a test message from the vault, queued at %s by %s.\nIf you read it, the vault's e-mail works.\n",
			now.UTC().Format(time.RFC3339), p)}
	if _, err := v.Mail.Add(m); err != nil {
		return m, mailErr(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := v.Mail.Wait(wctx, m.ID)
	out.Body = ""
	return out, err
}

// MailPrefs is what a user receives.
type MailPrefs struct {
	Email string `json:"email"`
	// Events are the kinds received (nil: the defaults of the user's
	// kind; empty: none).
	Events []string `json:"events"`
	Digest bool     `json:"digest,omitempty"`
}

func (v *Vault) putMailPrefs(u catalog.User, req MailPrefs) (UserInfo, error) {
	if req.Email != "" {
		if _, err := mail.ParseAddress(req.Email); err != nil {
			return UserInfo{}, mailErr(err)
		}
	}
	for _, e := range req.Events {
		if !slices.Contains(EventKinds, e) {
			return UserInfo{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "no event kind %q: choose among %v", e, EventKinds)
		}
		if (e == EventJobFailed || e == EventStorage || e == EventTape) && u.Kind != catalog.UserOperator {
			return UserInfo{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "%q goes to operators only", e)
		}
	}
	u.Email, u.MailEvents, u.MailDigest = req.Email, req.Events, req.Digest
	if err := v.Catalog.PutUser(u, false, false); err != nil {
		return UserInfo{}, catalogErr(err)
	}
	return userInfo(u), nil
}

// SetOwnMail sets the signed-in user's address and choice of mail.
func (v *Vault) SetOwnMail(ctx context.Context, p *Principal, req MailPrefs) (UserInfo, error) {
	if p.user == "" {
		return UserInfo{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "%s is not a portal user: use vaultctl user mail", p)
	}
	u, err := v.Catalog.User(p.user)
	if err != nil {
		return UserInfo{}, catalogErr(err)
	}
	return v.putMailPrefs(u, req)
}

// SetUserMail sets another user's address and choice of mail (a manager
// of the user).
func (v *Vault) SetUserMail(ctx context.Context, p *Principal, name string, req MailPrefs) (UserInfo, error) {
	u, err := v.userFor(p, name)
	if err != nil {
		return UserInfo{}, err
	}
	return v.putMailPrefs(u, req)
}
