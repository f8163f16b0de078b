package vault

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/hotp"
	"github.com/pquerna/otp/totp"
	"go.uber.org/zap"
	"golang.org/x/crypto/argon2"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// Portal users (issue 12): operators and company users, their passwords,
// second factors, sessions, failed sign-ins and lockouts. The catalog stores
// the records (appliance/catalog/users.go); the rules are here. docs/api.md
// describes the portal's side.

// Error codes of the portal's answers (besides internal/wire's).
const (
	CodeBadCredentials = "bad_credentials"      // wrong user name, password or second-factor code
	CodeTOTPRequired   = "totp_required"        // the user has a second factor: send its code
	CodeLocked         = "locked"               // too many failed sign-ins: wait, or an operator unlocks
	CodeRateLimited    = "rate_limited"         // too many sign-ins from this address: retry after Retry-After
	CodeCSRF           = "csrf"                 // a change without the session's CSRF token, or from another origin
	CodeSignedOut      = "signed_out"           // no session, or it expired or was signed out
	CodeMustChange     = "must_change_password" // a one-time password: change it before anything else
)

// Sign-in rules.
const (
	// SessionLifetime is how long a session lasts from sign-in.
	SessionLifetime = 12 * time.Hour
	// MaxLoginFailures failed sign-ins in a row of one user name from one
	// client address lock that pair (not the user) for Lockout.
	MaxLoginFailures = 5
	Lockout          = 15 * time.Minute
	// LoginRate is how many sign-in attempts one client address may make
	// per LoginWindow, successful or not.
	LoginRate   = 20
	LoginWindow = time.Minute
	// MinPassword is the shortest password a person may choose.
	MinPassword = 10
)

// argon2Params are the argon2id parameters of new password hashes: the
// OWASP Password Storage Cheat Sheet's first option (m=46 MiB, t=1 pass,
// p=1 lane), 16-byte salt, 32-byte tag: about 50 ms on one core of a small
// appliance, so a sign-in stays quick while guessing costs 46 MiB each. A hash carries its parameters, so changing
// them here rehashes nobody and breaks nobody. Hashes run at most
// maxHashing at once.
type argon2Params struct {
	time, memKiB uint32
	threads      uint8
}

var hashParams = argon2Params{time: 1, memKiB: 46 << 10, threads: 1}

const maxHashing = 2

var hashing = make(chan struct{}, maxHashing)

// HashPassword hashes a password with argon2id into PHC string form.
func HashPassword(pw string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	p := hashParams
	hashing <- struct{}{}
	key := argon2.IDKey([]byte(pw), salt, p.time, p.memKiB, p.threads, 32)
	<-hashing
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.memKiB, p.time, p.threads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// errHash: a stored hash the vault cannot read.
var errHash = errors.New("password hash is not argon2id PHC form")

// checkPassword compares pw with a stored hash in constant time. Its
// parameters are bounded (m at most 1 GiB, t at most 16), so a damaged
// record cannot make the vault hash for hours.
func checkPassword(hash, pw string) (bool, error) {
	f := strings.Split(hash, "$")
	if len(f) != 6 || f[1] != "argon2id" || f[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return false, errHash
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(f[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m < 8 || m > 1<<20 || t < 1 || t > 16 || p < 1 {
		return false, fmt.Errorf("%w: parameters %q", errHash, f[3])
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(f[4])
	want, err2 := b64.DecodeString(f[5])
	if err1 != nil || err2 != nil || len(salt) < 8 || len(want) < 16 || len(want) > 64 {
		return false, fmt.Errorf("%w: salt or tag", errHash)
	}
	hashing <- struct{}{}
	got := argon2.IDKey([]byte(pw), salt, t, m, p, uint32(len(want)))
	<-hashing
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// dummyHash is checked for an unknown user, so a sign-in takes as long
// whether or not the name exists.
var dummyHash = sync.OnceValue(func() string { h, _ := HashPassword("no such user"); return h })

// userCaps: what a company user may hold (view always); operators may hold
// every capability but backup, which is only an agent's.
var userCaps = []Capability{CapView, CapConfigure, CapRestore, CapManageComputers, CapManageUsers}

func validCaps(kind string, caps []string) ([]string, error) {
	allowed := userCaps
	if kind == catalog.UserOperator {
		allowed = operatorCaps
	}
	out := []string{string(CapView)}
	for _, c := range caps {
		if c == "" || slices.Contains(out, c) {
			continue
		}
		if !slices.Contains(allowed, Capability(c)) {
			return nil, fail(http.StatusBadRequest, wire.CodeBadRequest, "capability %q cannot be given to a %s: use %v", c, kind, allowed)
		}
		out = append(out, c)
	}
	return out, nil
}

// principalOf is the principal of a signed-in user.
func principalOf(u catalog.User) *Principal {
	caps := make([]Capability, len(u.Caps))
	for i, c := range u.Caps {
		caps[i] = Capability(c)
	}
	if u.Kind == catalog.UserOperator {
		return &Principal{Kind: Operator, Name: "operator " + u.Name, Caps: caps, user: u.Name}
	}
	p := &Principal{Kind: User, Name: "user " + u.Name + " of " + u.Company, Company: u.Company, Caps: caps, user: u.Name}
	if u.Limited {
		p.Computers = append([]string{}, u.Computers...) // non-nil: only these
	}
	return p
}

// UserRequest adds a user or changes one (vaultctl user add, caps; the
// portal's users page).
type UserRequest struct {
	Name    string   `json:"name"`
	Kind    string   `json:"kind"`              // operator or user
	Company string   `json:"company,omitempty"` // a company user's
	Caps    []string `json:"caps"`
	// Computers, with Limited, limits a company user to these computers
	// (ids or names).
	Limited   bool     `json:"limited,omitempty"`
	Computers []string `json:"computers,omitempty"`
	Password  string   `json:"password,omitempty"` // empty: the vault makes one and answers it once
}

// UserInfo is a user as the API shows it: never its hashes.
type UserInfo struct {
	Name        string    `json:"name"`
	Kind        string    `json:"kind"`
	Company     string    `json:"company,omitempty"`
	Caps        []string  `json:"caps"`
	Limited     bool      `json:"limited,omitempty"`
	Computers   []string  `json:"computers,omitempty"`
	TOTP        bool      `json:"totp"`
	MustChange  bool      `json:"must_change,omitempty"`
	LockedUntil time.Time `json:"locked_until,omitzero"`
	Created     time.Time `json:"created"`
	// Email, MailEvents and MailDigest are what mail the user receives
	// (MailEvents nil: the defaults of the kind).
	Email      string   `json:"email,omitempty"`
	MailEvents []string `json:"mail_events"`
	MailDigest bool     `json:"mail_digest,omitempty"`
	// Password is a password the vault made: shown once, in the answer
	// that made it.
	Password string `json:"password,omitempty"`
	// TOTPURL is the otpauth:// URL of a second factor just enabled.
	TOTPURL string `json:"totp_url,omitempty"`
}

func userInfo(u catalog.User) UserInfo {
	return UserInfo{Name: u.Name, Kind: u.Kind, Company: u.Company, Caps: u.Caps, Limited: u.Limited, Computers: u.Computers,
		TOTP: u.TOTP != "", MustChange: u.MustChange, LockedUntil: u.LockedUntil, Created: u.Created,
		Email: u.Email, MailEvents: u.MailEvents, MailDigest: u.MailDigest}
}

// newPassword makes a random password of 20 base32 letters (100 bits).
func newPassword() string {
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(randomBytes(13)))[:20]
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return b
}

func validPassword(pw string) error {
	if len(pw) < MinPassword || len(pw) > 1024 {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "a password needs %d to 1024 characters", MinPassword)
	}
	return nil
}

// manageUser checks that p may manage a user of kind and company: operator
// users are managed by operators only; a company's by an operator or by a
// user of that company holding manage_users over the whole company.
func manageUser(p *Principal, kind, company string) error {
	if !p.Has(CapManageUsers) {
		return forbid(p, CapManageUsers)
	}
	if p.Kind == User && p.Computers != nil {
		return fail(http.StatusForbidden, wire.CodeForbidden, "%s is limited to assigned computers: managing users needs the whole company", p)
	}
	if kind == catalog.UserOperator {
		if p.Kind != Operator {
			return fail(http.StatusForbidden, wire.CodeForbidden, "%s cannot manage operators: only an operator can", p)
		}
		return nil
	}
	_, err := companyFor(p, CapManageUsers, company, true)
	return err
}

// userFor reads the user name p may manage.
func (v *Vault) userFor(p *Principal, name string) (catalog.User, error) {
	u, err := v.Catalog.User(name)
	if err != nil {
		return u, catalogErr(err)
	}
	if err := manageUser(p, u.Kind, u.Company); err != nil {
		if ae, ok := err.(*apiError); ok && ae.status == http.StatusForbidden && manageUser(p, "", p.Company) == nil {
			return u, fail(http.StatusNotFound, wire.CodeNotFound, "user %q: %v", name, catalog.ErrNotFound)
		}
		return u, err
	}
	// A manager acts only on users who hold nothing it does not: else
	// resetting a stronger user's password would be a way to its rights.
	for _, c := range u.Caps {
		if !p.Has(Capability(c)) {
			return u, fail(http.StatusForbidden, wire.CodeForbidden, "user %q holds %q, which %s does not: only someone who holds every capability of a user may manage it", name, c, p)
		}
	}
	return u, nil
}

// grantable checks that p holds every capability it gives: managing users
// never raises anyone, the manager included, above the manager's rights.
func grantable(p *Principal, caps []string) error {
	for _, c := range caps {
		if !p.Has(Capability(c)) {
			return fail(http.StatusForbidden, wire.CodeForbidden, "%s cannot give %q: it does not hold it", p, c)
		}
	}
	return nil
}

// resolveComputers turns computer refs into ids of company.
func (v *Vault) resolveComputers(company string, refs []string) ([]string, error) {
	ids := []string{}
	for _, ref := range refs {
		cp, err := v.Catalog.FindComputer(ref)
		if err != nil || cp.Company != company {
			return nil, fail(http.StatusBadRequest, wire.CodeBadRequest, "computer %q is not a computer of company %q", ref, company)
		}
		if !slices.Contains(ids, cp.ID) {
			ids = append(ids, cp.ID)
		}
	}
	return ids, nil
}

// AddUser creates a user. Without a password the vault makes one, answered
// once and marked to be changed.
func (v *Vault) AddUser(ctx context.Context, p *Principal, req UserRequest) (UserInfo, error) {
	if req.Kind == "" {
		req.Kind = catalog.UserCompany
	}
	if req.Kind == catalog.UserCompany && req.Company == "" {
		req.Company = p.Company
	}
	if err := manageUser(p, req.Kind, req.Company); err != nil {
		return UserInfo{}, err
	}
	noteTarget(ctx, req.Company, "")
	noteDetail(ctx, "user "+req.Name+" with "+strings.Join(req.Caps, ","))
	u := catalog.User{Name: req.Name, Kind: req.Kind, Company: req.Company, Limited: req.Limited, Created: v.clk.Now()}
	var err error
	if u.Caps, err = validCaps(req.Kind, req.Caps); err != nil {
		return UserInfo{}, err
	}
	if err := grantable(p, u.Caps); err != nil {
		return UserInfo{}, err
	}
	if req.Limited {
		if u.Computers, err = v.resolveComputers(req.Company, req.Computers); err != nil {
			return UserInfo{}, err
		}
	}
	pw := req.Password
	if pw == "" {
		pw, u.MustChange = newPassword(), true
	} else if err := validPassword(pw); err != nil {
		return UserInfo{}, err
	}
	if err := catalog.ValidUserName(req.Name); err != nil {
		return UserInfo{}, catalogErr(err)
	}
	if u.Password, err = HashPassword(pw); err != nil {
		return UserInfo{}, err
	}
	if err := v.Catalog.PutUser(u, true, false); err != nil {
		return UserInfo{}, catalogErr(err)
	}
	out := userInfo(u)
	if u.MustChange {
		out.Password = pw
	}
	return out, nil
}

// Users lists the users p may manage.
func (v *Vault) Users(ctx context.Context, p *Principal) ([]UserInfo, error) {
	if err := manageUser(p, catalog.UserCompany, p.Company); err != nil {
		return nil, err
	}
	all, err := v.Catalog.Users()
	if err != nil {
		return nil, err
	}
	out := []UserInfo{}
	for _, u := range all {
		if manageUser(p, u.Kind, u.Company) == nil {
			out = append(out, userInfo(u))
		}
	}
	return out, nil
}

// SetCapsRequest changes a user's capabilities and assigned computers.
type SetCapsRequest struct {
	Caps      []string `json:"caps"`
	Limited   bool     `json:"limited,omitempty"`
	Computers []string `json:"computers,omitempty"`
}

// SetUserCaps replaces a user's capabilities and scope.
func (v *Vault) SetUserCaps(ctx context.Context, p *Principal, name string, req SetCapsRequest) (UserInfo, error) {
	u, err := v.userFor(p, name)
	if err != nil {
		return UserInfo{}, err
	}
	noteTarget(ctx, u.Company, "")
	if u.Caps, err = validCaps(u.Kind, req.Caps); err != nil {
		return UserInfo{}, err
	}
	if err := grantable(p, u.Caps); err != nil {
		return UserInfo{}, err
	}
	u.Limited, u.Computers = req.Limited, nil
	if req.Limited {
		if u.Kind == catalog.UserOperator {
			return UserInfo{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "an operator acts on every computer: assign computers to company users")
		}
		if u.Computers, err = v.resolveComputers(u.Company, req.Computers); err != nil {
			return UserInfo{}, err
		}
	}
	if err := v.Catalog.PutUser(u, false, false); err != nil {
		return UserInfo{}, catalogErr(err)
	}
	return userInfo(u), nil
}

// PasswordRequest sets a user's password (empty: the vault makes one) and
// may unlock it.
type PasswordRequest struct {
	Password string `json:"password,omitempty"`
	Unlock   bool   `json:"unlock,omitempty"`
}

// SetUserPassword resets a user's password (an operator, or a manager of
// the user's company) and signs the user out everywhere.
func (v *Vault) SetUserPassword(ctx context.Context, p *Principal, name string, req PasswordRequest) (UserInfo, error) {
	u, err := v.userFor(p, name)
	if err != nil {
		return UserInfo{}, err
	}
	noteTarget(ctx, u.Company, "")
	pw := req.Password
	if pw == "" {
		pw, u.MustChange = newPassword(), true
	} else if err := validPassword(pw); err != nil {
		return UserInfo{}, err
	} else {
		u.MustChange = false
	}
	if u.Password, err = HashPassword(pw); err != nil {
		return UserInfo{}, err
	}
	if err := v.Catalog.PutUser(u, false, req.Unlock); err != nil {
		return UserInfo{}, catalogErr(err)
	}
	if req.Unlock {
		v.signins.unlock(u.Name)
	}
	if err := v.Catalog.DeleteSessionsOf(u.Name); err != nil {
		return UserInfo{}, err
	}
	out := userInfo(u)
	if u.MustChange {
		out.Password = pw
	}
	return out, nil
}

// SetUserTOTP enables (with a new secret, answered once as an otpauth://
// URL) or disables a user's second factor.
func (v *Vault) SetUserTOTP(ctx context.Context, p *Principal, name string, enable bool) (UserInfo, error) {
	u, err := v.userFor(p, name)
	if err != nil {
		return UserInfo{}, err
	}
	noteTarget(ctx, u.Company, "")
	var url string
	u.TOTP = ""
	if enable {
		key, err := totp.Generate(totp.GenerateOpts{Issuer: "vaultnode", AccountName: u.Name, Rand: rand.Reader})
		if err != nil {
			return UserInfo{}, fmt.Errorf("make second factor: %w", err)
		}
		u.TOTP, url = key.Secret(), key.URL()
	}
	if err := v.Catalog.PutUser(u, false, false); err != nil {
		return UserInfo{}, catalogErr(err)
	}
	out := userInfo(u)
	out.TOTPURL = url
	return out, nil
}

// DeleteUser removes a user and signs it out.
func (v *Vault) DeleteUser(ctx context.Context, p *Principal, name string) error {
	u, err := v.userFor(p, name)
	if err != nil {
		return err
	}
	noteTarget(ctx, u.Company, "")
	return catalogErr(v.Catalog.DeleteUser(name))
}

// FirstOperator creates the operator "admin" with a one-time password when
// the vault has no operator, and answers the password (empty when one
// exists). Only vaultd calls it, at start.
func (v *Vault) FirstOperator() (name, password string, err error) {
	users, err := v.Catalog.Users()
	if err != nil {
		return "", "", err
	}
	for _, u := range users {
		if u.Kind == catalog.UserOperator {
			return "", "", nil
		}
	}
	out, err := v.AddUser(context.Background(), operator, UserRequest{Name: "admin", Kind: catalog.UserOperator, Caps: capNames(operatorCaps)})
	if err != nil {
		return "", "", fmt.Errorf("create the first operator: %w", err)
	}
	v.log.Info("first operator created; its one-time password was printed once", zap.String("user", out.Name))
	return out.Name, out.Password, nil
}

func capNames(cs []Capability) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = string(c)
	}
	return out
}

// Signing in.

// LoginRequest signs a user in.
type LoginRequest struct {
	User     string `json:"user"`
	Password string `json:"password"`
	TOTP     string `json:"totp,omitempty"`
}

// LoginResponse is a new session: the cookie carries the id; CSRF is the
// token every change must carry (header X-CSRF-Token or form field
// csrf_token).
type LoginResponse struct {
	User    UserInfo  `json:"user"`
	CSRF    string    `json:"csrf_token"`
	Expires time.Time `json:"expires"`
}

// loginLimiter counts sign-in attempts per client address in fixed
// windows. It holds at most maxTracked addresses; beyond that every
// address shares one count, so a flood of addresses slows sign-in for all
// rather than growing memory.
type loginLimiter struct {
	mu     sync.Mutex
	window time.Time
	counts map[string]int
	// rate per period: zero takes LoginRate per LoginWindow (the reset
	// mails per user use another).
	rate   int
	period time.Duration
}

const maxTracked = 10000

// allow counts an attempt from addr at now, and refuses the rate+1-th of
// a window with the time until the next.
func (l *loginLimiter) allow(addr string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rate, period := l.rate, l.period
	if rate == 0 {
		rate, period = LoginRate, LoginWindow
	}
	if w := now.Truncate(period); !w.Equal(l.window) || l.counts == nil {
		l.window, l.counts = w, map[string]int{}
	}
	if _, ok := l.counts[addr]; !ok && len(l.counts) >= maxTracked {
		addr = "*"
	}
	l.counts[addr]++
	if l.counts[addr] > rate {
		return false, l.window.Add(period).Sub(now)
	}
	return true, 0
}

// loginGuard counts failed sign-ins per (user name, client address): the
// MaxLoginFailures-th in a row locks that pair for Lockout. A pair, not the
// user: someone guessing from one address cannot lock the user out of
// every other address. Names that exist and names that do not are counted
// and answered alike, so "locked" tells nothing about a name. Failures
// older than Lockout are forgotten. It holds at most maxTracked pairs;
// beyond that (after dropping spent ones) new pairs of a name share one
// count per name, so a flood of addresses slows that name rather than
// growing memory.
type loginGuard struct {
	mu    sync.Mutex
	pairs map[guardKey]*guardEntry
}

type guardKey struct{ user, addr string }

type guardEntry struct {
	failures int
	last     time.Time // the last failure
	locked   time.Time // refused until then
}

func (g *loginGuard) key(user, addr string, now time.Time) guardKey {
	if len(user) > 128 {
		user = user[:128]
	}
	k := guardKey{user, addr}
	if g.pairs == nil {
		g.pairs = map[guardKey]*guardEntry{}
	}
	if _, ok := g.pairs[k]; ok || len(g.pairs) < maxTracked {
		return k
	}
	for k2, e := range g.pairs {
		if now.Sub(e.last) >= Lockout && !now.Before(e.locked) {
			delete(g.pairs, k2)
		}
	}
	if len(g.pairs) < maxTracked {
		return k
	}
	return guardKey{user, "*"}
}

// lockedUntil answers until when the pair is locked (zero: it is not).
func (g *loginGuard) lockedUntil(user, addr string, now time.Time) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.pairs[g.key(user, addr, now)]; e != nil && now.Before(e.locked) {
		return e.locked
	}
	return time.Time{}
}

// failed counts a failure of the pair at now.
func (g *loginGuard) failed(user, addr string, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := g.key(user, addr, now)
	e := g.pairs[k]
	if e == nil || now.Sub(e.last) >= Lockout {
		e = &guardEntry{}
		g.pairs[k] = e
	}
	e.failures++
	e.last = now
	if e.failures >= MaxLoginFailures {
		e.failures, e.locked = 0, now.Add(Lockout)
	}
}

// succeeded forgets the pair's failures.
func (g *loginGuard) succeeded(user, addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.pairs, guardKey{user, addr})
}

// unlock forgets every failure and lock of user (an operator's -unlock).
func (g *loginGuard) unlock(user string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k := range g.pairs {
		if k.user == user {
			delete(g.pairs, k)
		}
	}
}

func sessionHash(id string) [32]byte { return sha256.Sum256([]byte("vaultnode session\x00" + id)) }

// csrfToken is a session's CSRF token: derived from its id by a one-way
// hash, so the page can carry it and it reveals nothing of the id (which
// only the HttpOnly cookie holds).
func csrfToken(id string) string {
	h := sha256.Sum256([]byte("vaultnode csrf\x00" + id))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// Login checks a user's password (and second factor) and opens a session.
// It always makes a new session id: whatever session the client had is
// never promoted (no session fixation).
func (v *Vault) Login(ctx context.Context, from string, req LoginRequest) (id string, out LoginResponse, err error) {
	now := v.clk.Now()
	if ok, wait := v.logins.allow(from, now); !ok {
		e := fail(http.StatusTooManyRequests, CodeRateLimited, "too many sign-ins from %s: try again in %s", from, wait.Round(time.Second))
		e.(*apiError).retryAfter = wait
		return "", out, e
	}
	if until := v.signins.lockedUntil(req.User, from, now); !until.IsZero() {
		return "", out, fail(http.StatusForbidden, CodeLocked, "too many failed sign-ins with this user name from %s: try again after %s, or ask an operator to unlock it (vaultctl user passwd NAME -unlock)",
			from, until.UTC().Format(time.RFC3339))
	}
	bad := fail(http.StatusUnauthorized, CodeBadCredentials, "wrong user name or password")
	u, err := v.Catalog.User(req.User)
	if errors.Is(err, catalog.ErrNotFound) {
		checkPassword(dummyHash(), req.Password)
		v.signins.failed(req.User, from, now)
		return "", out, bad
	}
	if err != nil {
		return "", out, err
	}
	ok, err := checkPassword(u.Password, req.Password)
	if err != nil {
		return "", out, fmt.Errorf("check password of %s: %w", u.Name, err)
	}
	var step int64
	if ok && u.TOTP != "" {
		if req.TOTP == "" {
			return "", out, fail(http.StatusUnauthorized, CodeTOTPRequired, "user %s has a second factor: enter the 6-digit code of the authenticator app", u.Name)
		}
		step, ok = totpStep(u.TOTP, req.TOTP, now)
		bad = fail(http.StatusUnauthorized, CodeBadCredentials, "wrong second-factor code")
		if ok && step <= u.TOTPStep {
			ok, bad = false, fail(http.StatusUnauthorized, CodeBadCredentials, "this second-factor code was used already: wait for the next one")
		}
	}
	if !ok {
		v.signins.failed(u.Name, from, now)
		return "", out, bad
	}
	id = base64.RawURLEncoding.EncodeToString(randomBytes(32))
	s := catalog.Session{User: u.Name, Created: now, Expires: now.Add(SessionLifetime), From: from}
	if err := v.Catalog.PutSessionTOTP(sessionHash(id), s, step); err != nil {
		if errors.Is(err, catalog.ErrConflict) { // another sign-in used the code meanwhile
			v.signins.failed(u.Name, from, now)
			return "", out, fail(http.StatusUnauthorized, CodeBadCredentials, "this second-factor code was used already: wait for the next one")
		}
		return "", out, err
	}
	v.signins.succeeded(u.Name, from)
	noteActor(ctx, principalOf(u).Name, principalOf(u).Kind.String())
	noteTarget(ctx, u.Company, "")
	v.log.Info("portal sign-in", zap.String("user", u.Name), zap.String("from", from))
	return id, LoginResponse{User: userInfo(u), CSRF: csrfToken(id), Expires: s.Expires}, nil
}

// totpStep checks a second-factor code against the steps of now (one step
// of skew each way) and answers the step it matched: a step is used once.
func totpStep(secret, code string, now time.Time) (int64, bool) {
	opts := hotp.ValidateOpts{Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}
	cur := now.Unix() / 30
	for _, step := range []int64{cur - 1, cur, cur + 1} {
		want, err := hotp.GenerateCodeCustom(secret, uint64(step), opts)
		if err == nil && subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			return step, true
		}
	}
	return 0, false
}

// sessionUser finds the user of a session id, refusing an expired one.
func (v *Vault) sessionUser(id string) (catalog.User, catalog.Session, error) {
	signedOut := fail(http.StatusUnauthorized, CodeSignedOut, "not signed in, or the session expired or was signed out: sign in again")
	if id == "" || len(id) > 128 {
		return catalog.User{}, catalog.Session{}, signedOut
	}
	s, err := v.Catalog.Session(sessionHash(id))
	if errors.Is(err, catalog.ErrNotFound) {
		return catalog.User{}, s, signedOut
	}
	if err != nil {
		return catalog.User{}, s, err
	}
	if !v.clk.Now().Before(s.Expires) {
		return catalog.User{}, s, signedOut
	}
	u, err := v.Catalog.User(s.User)
	if errors.Is(err, catalog.ErrNotFound) {
		return u, s, signedOut
	}
	return u, s, err
}

// Logout ends the session id, or with everywhere every session of its
// user.
func (v *Vault) Logout(ctx context.Context, p *Principal, id string, everywhere bool) error {
	if everywhere {
		return v.Catalog.DeleteSessionsOf(p.user)
	}
	return v.Catalog.DeleteSession(sessionHash(id))
}

// ChangeOwnPassword sets the signed-in user's password after checking the
// current one, and ends the user's other sessions (keep is the session that
// asked; "" ends every one).
func (v *Vault) ChangeOwnPassword(ctx context.Context, p *Principal, keep, from, current, next string) error {
	if p.user == "" {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%s is not a portal user: use vaultctl user passwd", p)
	}
	u, err := v.Catalog.User(p.user)
	if err != nil {
		return catalogErr(err)
	}
	ok, err := checkPassword(u.Password, current)
	if err != nil {
		return fmt.Errorf("check password of %s: %w", u.Name, err)
	}
	if !ok {
		v.signins.failed(u.Name, from, v.clk.Now())
		return fail(http.StatusUnauthorized, CodeBadCredentials, "the current password is wrong")
	}
	if err := validPassword(next); err != nil {
		return err
	}
	if next == current {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "the new password is the current one: choose another")
	}
	if u.Password, err = HashPassword(next); err != nil {
		return err
	}
	u.MustChange = false
	if err := v.Catalog.PutUser(u, false, false); err != nil {
		return catalogErr(err)
	}
	// Sign out everywhere, then put back the session that asked.
	var s catalog.Session
	if keep != "" {
		if s, err = v.Catalog.Session(sessionHash(keep)); err != nil {
			return err
		}
	}
	if err := v.Catalog.DeleteSessionsOf(u.Name); err != nil {
		return err
	}
	if keep != "" {
		return v.Catalog.PutSession(sessionHash(keep), s)
	}
	return nil
}
