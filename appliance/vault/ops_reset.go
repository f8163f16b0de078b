package vault

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/mail"
	"vaultnode/internal/wire"
)

// Password reset by e-mail link (issue 12; docs/api.md, "Password reset").
// Anyone may ask, by user name or e-mail address; the answer never says
// whether a user matched. A user with an address gets a message with a
// link carrying a random token (32 bytes, base64url); the catalog keeps
// only its SHA-256. The link works once, for ResetLifetime, and a new
// request replaces it. Using it sets the password, clears the user's
// lockouts and ends every session; a second factor stays required.

// Reset rules.
const (
	ResetLifetime = 30 * time.Minute
	// ResetMailsPerUser reset messages at most go to one user per
	// ResetMailWindow; requests beyond are answered alike and send
	// nothing.
	ResetMailsPerUser = 3
	ResetMailWindow   = 15 * time.Minute
	// maxResetTargets bounds the users one request mails (users sharing
	// an address).
	maxResetTargets = 10
)

// ResetRequest asks for a reset link (a user name or an e-mail address).
type ResetRequest struct {
	User string `json:"user"`
}

// ResetAnswer is the one answer to every well-formed request.
const ResetAnswer = "If a user of that name or address has an e-mail address, a message with a link to choose a new password is on its way. The link works once, for 30 minutes."

func resetHash(token string) [32]byte { return sha256.Sum256([]byte("vaultnode reset\x00" + token)) }

// portalURL is the base of mailed links: Options.PortalURL, else https://
// and the portal's listener address (a listener on every address names
// this host by its name).
func (v *Vault) portalURL() string {
	if v.opts.PortalURL != "" {
		return strings.TrimRight(v.opts.PortalURL, "/")
	}
	addr := v.portalAddr
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			if name, err := os.Hostname(); err == nil {
				addr = net.JoinHostPort(name, port)
			}
		}
	}
	return "https://" + addr
}

// resetTargets finds the users who with an address: the user of that
// name, else those whose address it is.
func (v *Vault) resetTargets(who string) ([]catalog.User, error) {
	if u, err := v.Catalog.User(who); err == nil {
		if u.Email == "" {
			return nil, nil
		}
		return []catalog.User{u}, nil
	} else if !errors.Is(err, catalog.ErrNotFound) {
		return nil, err
	}
	if !strings.Contains(who, "@") {
		return nil, nil
	}
	all, err := v.Catalog.Users()
	if err != nil {
		return nil, err
	}
	var out []catalog.User
	for _, u := range all {
		if u.Email != "" && strings.EqualFold(u.Email, who) && len(out) < maxResetTargets {
			out = append(out, u)
		}
	}
	return out, nil
}

// RequestReset mails a reset link to the users who names (a user name or
// an e-mail address) if they have an address. Its answer is the same
// whether or not anyone matched; only the client address's rate limit
// (shared with sign-in) is refused, alike for every name.
func (v *Vault) RequestReset(ctx context.Context, from string, req ResetRequest) error {
	now := v.clk.Now()
	if ok, wait := v.logins.allow(from, now); !ok {
		e := fail(http.StatusTooManyRequests, CodeRateLimited, "too many requests from %s: try again in %s", from, wait.Round(time.Second))
		e.(*apiError).retryAfter = wait
		return e
	}
	who := strings.ToLower(strings.TrimSpace(req.User))
	if who == "" || len(who) > 254 {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "enter your user name or e-mail address (at most 254 characters)")
	}
	users, err := v.resetTargets(who)
	if err != nil {
		return err
	}
	if len(users) == 0 {
		noteDetail(ctx, "reset asked: no user with an address matches")
	}
	for _, u := range users {
		noteTarget(ctx, u.Company, "")
		if ok, _ := v.resetMails.allow(u.Name, now); !ok {
			noteDetail(ctx, "reset of "+u.Name+": too many links lately, none sent")
			v.log.Warn("password reset link not sent: too many for this user lately", zap.String("user", u.Name), zap.String("from", from))
			continue
		}
		if err := v.mailReset(u, from, now); err != nil {
			return err
		}
		noteDetail(ctx, "reset link mailed to user "+u.Name)
	}
	return nil
}

// mailReset makes u's token, replacing any other, and queues its message.
func (v *Vault) mailReset(u catalog.User, from string, now time.Time) error {
	token := base64.RawURLEncoding.EncodeToString(randomBytes(32))
	if err := v.Catalog.PutReset(resetHash(token), catalog.Reset{User: u.Name, Created: now, Expires: now.Add(ResetLifetime)}); err != nil {
		return fmt.Errorf("record reset token of %s: %w", u.Name, err)
	}
	link := v.portalURL() + "/reset?token=" + url.QueryEscape(token)
	m := mail.Message{ID: "r-" + hex.EncodeToString(randomBytes(10)), Kind: "password_reset", To: u.Email, Created: now,
		Subject: "vaultnode: choose a new password",
		Body: fmt.Sprintf("Someone (from %s) asked to reset the password of the vaultnode portal user %s.\n\n"+
			"To choose a new password, open this link within 30 minutes (it works once):\n\n%s\n\n"+
			"If you did not ask, ignore this message: your password stays as it is.\n", from, u.Name, link)}
	if _, err := v.Mail.Add(m); err != nil {
		return fmt.Errorf("queue reset mail of %s: %w", u.Name, err)
	}
	return nil
}

// errResetGone: the link is unknown, used, replaced or expired.
var errResetGone = fail(http.StatusNotFound, wire.CodeNotFound, "this password reset link was used, replaced by a newer one, or expired: ask for a new one (Forgot password? on the sign-in page)")

// CheckReset says whether token is a live reset link (the reset page
// shows its form only then).
func (v *Vault) CheckReset(token string) error {
	if token == "" || len(token) > 128 {
		return errResetGone
	}
	r, err := v.Catalog.Reset(resetHash(token))
	if errors.Is(err, catalog.ErrNotFound) || (err == nil && !v.clk.Now().Before(r.Expires)) {
		return errResetGone
	}
	return err
}

// ResetPassword spends a reset link: the user's password becomes next
// (the rules of a change), its lockouts clear and every session of the
// user ends. A second factor stays as it was: the next sign-in needs it.
func (v *Vault) ResetPassword(ctx context.Context, from, token, next string) error {
	if err := v.CheckReset(token); err != nil {
		return err
	}
	if err := validPassword(next); err != nil {
		return err
	}
	h, err := HashPassword(next)
	if err != nil {
		return err
	}
	name, err := v.Catalog.UseReset(resetHash(token), v.clk.Now(), h)
	if errors.Is(err, catalog.ErrNotFound) {
		return errResetGone // spent meanwhile, or the user is gone
	}
	if err != nil {
		return fmt.Errorf("reset password: %w", err)
	}
	v.signins.unlock(name)
	if u, err := v.Catalog.User(name); err == nil {
		p := principalOf(u)
		noteActor(ctx, p.Name, p.Kind.String())
		noteTarget(ctx, u.Company, "")
	}
	noteDetail(ctx, "password of "+name+" reset by e-mail link; every session ended")
	v.log.Info("portal password reset by e-mail link", zap.String("user", name), zap.String("from", from))
	return nil
}
