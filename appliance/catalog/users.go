package catalog

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"time"

	"go.etcd.io/bbolt"
)

// Portal users and their sessions (issue 12; docs/format.md, "Catalog
// commands"). The catalog stores what the vault decides: a password's
// argon2id hash (never the password), a session's SHA-256 (never its id),
// failed sign-ins and lockouts. The rules (capabilities, scope, how long a
// lockout lasts) live in appliance/vault.

var (
	bUsers    = []byte("users")           // user name: User
	bSessions = []byte("portal_sessions") // hex SHA-256 of the session id: Session
)

// Commands of portal users.
const (
	KindPutUser          Kind = "put_user"
	KindDeleteUser       Kind = "delete_user"
	KindLoginFailed      Kind = "login_failed"
	KindPutSession       Kind = "put_session"
	KindDeleteSession    Kind = "delete_session"
	KindDeleteSessionsOf Kind = "delete_sessions_of"
	KindExpireSessions   Kind = "expire_sessions"
)

// Kinds of users.
const (
	UserOperator = "operator" // the provider's staff: every company
	UserCompany  = "user"     // a company's staff: their company only
)

// MaxSessionsPerUser bounds a user's open sessions; put_session drops the
// oldest beyond it.
const MaxSessionsPerUser = 32

// User is a portal user.
type User struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`              // UserOperator or UserCompany
	Company string `json:"company,omitempty"` // a company user's company
	// Caps are the capabilities the user holds (vault.Capability names).
	Caps []string `json:"caps"`
	// Limited limits a company user to Computers (ids); otherwise the
	// user sees all of the company's.
	Limited   bool     `json:"limited,omitempty"`
	Computers []string `json:"computers,omitempty"`
	// Password is the argon2id hash in PHC string form
	// ($argon2id$v=19$m=..,t=..,p=..$salt$hash).
	Password string `json:"password"`
	// MustChange is set on a password the vault made (the first
	// operator's, a reset): the user should choose their own.
	MustChange bool `json:"must_change,omitempty"`
	// TOTP is the base32 secret of the second factor (RFC 6238); empty:
	// none.
	TOTP string `json:"totp,omitempty"`
	// TOTPStep is the last 30-second step whose code signed the user in:
	// a code of that step or an older one is refused (no reuse).
	TOTPStep int64     `json:"totp_step,omitempty"`
	Created  time.Time `json:"created"`
	// Email is where the vault's e-mail to the user goes (empty: none).
	// MailEvents are the kinds of events the user receives (nil: the
	// defaults of the user's kind; empty: none); MailDigest gathers them
	// into one message a day instead of one per event.
	Email      string   `json:"email,omitempty"`
	MailEvents []string `json:"mail_events"`
	MailDigest bool     `json:"mail_digest,omitempty"`
	// Failures and LockedUntil are what login_failed recorded; the vault
	// now counts failures per (user, address) in memory and issues no
	// login_failed (older logs still apply).
	Failures    int       `json:"failures,omitempty"`
	LockedUntil time.Time `json:"locked_until,omitzero"`
}

// Session is a signed-in portal session. Its key is the SHA-256 of its
// random id, so a copy of the catalog signs no one in.
type Session struct {
	User    string    `json:"user"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	From    string    `json:"from,omitempty"` // the client address at sign-in
}

// Payloads of the user commands.
type (
	// PutUserCmd creates (Create: refused if the name exists) or replaces
	// a user. A replacement keeps the stored failures and lockout unless
	// Unlock.
	PutUserCmd struct {
		User   User `json:"user"`
		Create bool `json:"create,omitempty"`
		Unlock bool `json:"unlock,omitempty"`
	}
	DeleteUserCmd struct {
		Name string `json:"name"`
	}
	// LoginFailedCmd counts a failed sign-in at Now; the MaxFailures-th
	// locks the user until Now+Lockout and starts counting again.
	LoginFailedCmd struct {
		Name        string        `json:"name"`
		Now         time.Time     `json:"now"`
		MaxFailures int           `json:"max_failures"`
		Lockout     time.Duration `json:"lockout"`
	}
	// PutSessionCmd records a session and clears the user's failures;
	// the user's expired sessions (at Session.Created) and those beyond
	// MaxSessionsPerUser go. A non-zero TOTPStep is the second-factor
	// step that signed in: refused (ErrConflict) unless newer than the
	// user's TOTPStep, which it becomes.
	PutSessionCmd struct {
		Hash     []byte  `json:"hash"`
		Session  Session `json:"session"`
		TOTPStep int64   `json:"totp_step,omitempty"`
	}
	DeleteSessionCmd struct {
		Hash []byte `json:"hash"`
	}
	// DeleteSessionsOfCmd signs a user out everywhere.
	DeleteSessionsOfCmd struct {
		User string `json:"user"`
	}
	// ExpireSessionsCmd removes every session expired at Now.
	ExpireSessionsCmd struct {
		Now time.Time `json:"now"`
	}
)

func init() {
	appliers[KindPutUser] = typed(applyPutUser)
	appliers[KindDeleteUser] = typed(applyDeleteUser)
	appliers[KindLoginFailed] = typed(applyLoginFailed)
	appliers[KindPutSession] = typed(applyPutSession)
	appliers[KindDeleteSession] = typed(applyDeleteSession)
	appliers[KindDeleteSessionsOf] = typed(applyDeleteSessionsOf)
	appliers[KindExpireSessions] = typed(applyExpireSessions)
}

var userRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._@-]{0,63}$`)

// ValidUserName reports whether name can name a user.
func ValidUserName(name string) error {
	if !userRE.MatchString(name) {
		return fmt.Errorf("%w user name %q: use 1 to 64 of a-z 0-9 . _ @ - starting with a letter or digit", ErrInvalid, name)
	}
	return nil
}

func validUser(tx *bbolt.Tx, u User) error {
	if err := ValidUserName(u.Name); err != nil {
		return err
	}
	switch u.Kind {
	case UserOperator:
		if u.Company != "" || u.Limited || u.Computers != nil {
			return fmt.Errorf("%w: operator %q has a company or computers: operators act on every company", ErrInvalid, u.Name)
		}
	case UserCompany:
		if tx.Bucket(bCompanies).Get([]byte(u.Company)) == nil {
			return fmt.Errorf("company %q of user %q: %w", u.Company, u.Name, ErrNotFound)
		}
		if !u.Limited && u.Computers != nil {
			return fmt.Errorf("%w: user %q has computers but is not limited to them", ErrInvalid, u.Name)
		}
		for _, id := range u.Computers {
			cp, err := getComputer(tx, id)
			if err != nil {
				return fmt.Errorf("computer %q of user %q: %w", id, u.Name, err)
			}
			if cp.Company != u.Company {
				return fmt.Errorf("%w: computer %q is not of company %q", ErrInvalid, id, u.Company)
			}
		}
	default:
		return fmt.Errorf("%w user kind %q: operator or user", ErrInvalid, u.Kind)
	}
	if u.Password == "" {
		return fmt.Errorf("%w: user %q has no password hash", ErrInvalid, u.Name)
	}
	if err := ValidContact(u.Email); err != nil {
		return fmt.Errorf("user %q: %w", u.Name, err)
	}
	if len(u.MailEvents) > 16 {
		return fmt.Errorf("%w: user %q chose %d kinds of mail (at most 16)", ErrInvalid, u.Name, len(u.MailEvents))
	}
	for _, e := range u.MailEvents {
		if len(e) == 0 || len(e) > 32 {
			return fmt.Errorf("%w: user %q: mail event kind %q", ErrInvalid, u.Name, e)
		}
	}
	if len(u.Caps) > 16 || len(u.Computers) > 10000 {
		return fmt.Errorf("%w: user %q has %d capabilities and %d computers (limits 16 and 10000)", ErrInvalid, u.Name, len(u.Caps), len(u.Computers))
	}
	return nil
}

func bucket(tx *bbolt.Tx, name []byte) (*bbolt.Bucket, error) {
	if tx.Writable() {
		return tx.CreateBucketIfNotExists(name)
	}
	return tx.Bucket(name), nil // nil: a catalog from before portal users
}

func getUser(tx *bbolt.Tx, name string) (User, error) {
	var u User
	b, _ := bucket(tx, bUsers)
	if b == nil {
		return u, fmt.Errorf("user %q: %w", name, ErrNotFound)
	}
	v := b.Get([]byte(name))
	if v == nil {
		return u, fmt.Errorf("user %q: %w", name, ErrNotFound)
	}
	if err := decodeJSON(bUsers, []byte(name), v, &u); err != nil {
		return u, err
	}
	if u.Name != name {
		return u, corrupt(bUsers, []byte(name), "record names user %q", u.Name)
	}
	return u, nil
}

func applyPutUser(c *Catalog, tx *bbolt.Tx, p PutUserCmd) (any, error) {
	u := p.User
	if err := validUser(tx, u); err != nil {
		return nil, err
	}
	old, err := getUser(tx, u.Name)
	switch {
	case err == nil && p.Create:
		return nil, fmt.Errorf("user %q: %w", u.Name, ErrExists)
	case err == nil:
		u.Created = old.Created
		u.TOTPStep = max(u.TOTPStep, old.TOTPStep) // a stale copy never lets a used code back in
		if !p.Unlock {
			u.Failures, u.LockedUntil = old.Failures, old.LockedUntil
		} else {
			u.Failures, u.LockedUntil = 0, time.Time{}
		}
	case !p.Create:
		return nil, err
	}
	b, err := bucket(tx, bUsers)
	if err != nil {
		return nil, err
	}
	return nil, put(b, bUsers, []byte(u.Name), u)
}

func applyDeleteUser(c *Catalog, tx *bbolt.Tx, p DeleteUserCmd) (any, error) {
	if _, err := getUser(tx, p.Name); err != nil {
		return nil, err
	}
	b, err := bucket(tx, bUsers)
	if err != nil {
		return nil, err
	}
	if err := b.Delete([]byte(p.Name)); err != nil {
		return nil, err
	}
	return applyDeleteSessionsOf(c, tx, DeleteSessionsOfCmd{User: p.Name})
}

func applyLoginFailed(c *Catalog, tx *bbolt.Tx, p LoginFailedCmd) (any, error) {
	u, err := getUser(tx, p.Name)
	if err != nil {
		return nil, err
	}
	u.Failures++
	if p.MaxFailures > 0 && u.Failures >= p.MaxFailures {
		u.Failures, u.LockedUntil = 0, p.Now.Add(p.Lockout)
	}
	b, err := bucket(tx, bUsers)
	if err != nil {
		return nil, err
	}
	return u, put(b, bUsers, []byte(u.Name), u)
}

func sessionKey(hash []byte) ([]byte, error) {
	if len(hash) != 32 {
		return nil, fmt.Errorf("%w: session hash of %d bytes, want 32", ErrInvalid, len(hash))
	}
	return []byte(hex.EncodeToString(hash)), nil
}

func applyPutSession(c *Catalog, tx *bbolt.Tx, p PutSessionCmd) (any, error) {
	k, err := sessionKey(p.Hash)
	if err != nil {
		return nil, err
	}
	u, err := getUser(tx, p.Session.User)
	if err != nil {
		return nil, err
	}
	b, err := bucket(tx, bSessions)
	if err != nil {
		return nil, err
	}
	if b.Get(k) != nil {
		return nil, fmt.Errorf("session: %w", ErrExists)
	}
	if p.TOTPStep != 0 {
		if p.TOTPStep <= u.TOTPStep {
			return nil, fmt.Errorf("second-factor step %d of user %q was used already: %w", p.TOTPStep, u.Name, ErrConflict)
		}
		u.TOTPStep = p.TOTPStep
	}
	// The user's sessions: expired ones go, and the oldest beyond the cap.
	type old struct {
		k []byte
		s Session
	}
	var mine []old
	err = b.ForEach(func(k, v []byte) error {
		var s Session
		if err := decodeJSON(bSessions, k, v, &s); err != nil {
			return err
		}
		if s.User == u.Name {
			mine = append(mine, old{bytes.Clone(k), s})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(mine, func(a, b old) int { return a.s.Created.Compare(b.s.Created) })
	for i, o := range mine {
		if !o.s.Expires.After(p.Session.Created) || len(mine)-i >= MaxSessionsPerUser {
			if err := b.Delete(o.k); err != nil {
				return nil, err
			}
		}
	}
	u.Failures = 0
	ub, err := bucket(tx, bUsers)
	if err != nil {
		return nil, err
	}
	if err := put(ub, bUsers, []byte(u.Name), u); err != nil {
		return nil, err
	}
	return nil, put(b, bSessions, k, p.Session)
}

func applyDeleteSession(c *Catalog, tx *bbolt.Tx, p DeleteSessionCmd) (any, error) {
	k, err := sessionKey(p.Hash)
	if err != nil {
		return nil, err
	}
	b, err := bucket(tx, bSessions)
	if err != nil {
		return nil, err
	}
	return nil, b.Delete(k) // deleting a session that is gone is no error
}

func applyDeleteSessionsOf(c *Catalog, tx *bbolt.Tx, p DeleteSessionsOfCmd) (any, error) {
	return deleteSessions(tx, func(s Session) bool { return s.User == p.User })
}

func applyExpireSessions(c *Catalog, tx *bbolt.Tx, p ExpireSessionsCmd) (any, error) {
	return deleteSessions(tx, func(s Session) bool { return !s.Expires.After(p.Now) })
}

// deleteSessions removes the sessions del chooses and answers how many. A
// record that cannot be decoded goes too: no one can sign in with it.
func deleteSessions(tx *bbolt.Tx, match func(Session) bool) (any, error) {
	b, err := bucket(tx, bSessions)
	if err != nil {
		return nil, err
	}
	var del [][]byte
	err = b.ForEach(func(k, v []byte) error {
		var s Session
		if err := decodeJSON(bSessions, k, v, &s); err != nil || match(s) {
			del = append(del, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range del {
		if err := b.Delete(k); err != nil {
			return nil, err
		}
	}
	return len(del), nil
}

// PutUser creates (create) or replaces a user; unlock clears its failures
// and lockout.
func (c *Catalog) PutUser(u User, create, unlock bool) error {
	_, err := c.apply(KindPutUser, PutUserCmd{User: u, Create: create, Unlock: unlock})
	return err
}

// DeleteUser removes a user and its sessions.
func (c *Catalog) DeleteUser(name string) error {
	_, err := c.apply(KindDeleteUser, DeleteUserCmd{Name: name})
	return err
}

// LoginFailed counts a failed sign-in of name at now.
func (c *Catalog) LoginFailed(name string, now time.Time, maxFailures int, lockout time.Duration) error {
	_, err := c.apply(KindLoginFailed, LoginFailedCmd{Name: name, Now: now, MaxFailures: maxFailures, Lockout: lockout})
	return err
}

// PutSession records a session under the SHA-256 hash of its id.
func (c *Catalog) PutSession(hash [32]byte, s Session) error {
	return c.PutSessionTOTP(hash, s, 0)
}

// PutSessionTOTP records a session opened with the second-factor step
// step (0: none); a step not newer than the user's last is ErrConflict.
func (c *Catalog) PutSessionTOTP(hash [32]byte, s Session, step int64) error {
	_, err := c.apply(KindPutSession, PutSessionCmd{Hash: hash[:], Session: s, TOTPStep: step})
	return err
}

// DeleteSession removes one session.
func (c *Catalog) DeleteSession(hash [32]byte) error {
	_, err := c.apply(KindDeleteSession, DeleteSessionCmd{Hash: hash[:]})
	return err
}

// DeleteSessionsOf removes every session of user.
func (c *Catalog) DeleteSessionsOf(user string) error {
	_, err := c.apply(KindDeleteSessionsOf, DeleteSessionsOfCmd{User: user})
	return err
}

// ExpireSessions removes the sessions expired at now and answers how many.
func (c *Catalog) ExpireSessions(now time.Time) (int, error) {
	n, err := c.apply(KindExpireSessions, ExpireSessionsCmd{Now: now})
	if err != nil {
		return 0, err
	}
	k, _ := n.(int)
	return k, nil
}

// User reads one user.
func (c *Catalog) User(name string) (User, error) {
	var u User
	err := c.db.View(func(tx *bbolt.Tx) error {
		var err error
		u, err = getUser(tx, name)
		return err
	})
	return u, err
}

// Users lists the users (of one company: company set; operators:
// operators true), by name.
func (c *Catalog) Users() ([]User, error) {
	var out []User
	err := c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bUsers)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var u User
			if err := decodeJSON(bUsers, k, v, &u); err != nil {
				return err
			}
			out = append(out, u)
			return nil
		})
	})
	return out, err
}

// Session reads the session whose id hashes to hash.
func (c *Catalog) Session(hash [32]byte) (Session, error) {
	var s Session
	k, _ := sessionKey(hash[:])
	err := c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bSessions)
		var v []byte
		if b != nil {
			v = b.Get(k)
		}
		if v == nil {
			return fmt.Errorf("session: %w", ErrNotFound)
		}
		return decodeJSON(bSessions, k, v, &s)
	})
	return s, err
}
