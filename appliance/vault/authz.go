package vault

import (
	"net/http"
	"slices"

	"vaultnode/appliance/pair"
	"vaultnode/internal/wire"
)

// Capability is a right a principal holds and a route needs. The names are
// stable: the portal stores them with its users (issue 12).
type Capability string

// Capabilities. A principal holds them over a scope (see Principal).
const (
	// CapPublic is needed by no one: the route answers without a principal
	// (the health check; enrolment, which a token authorizes).
	CapPublic Capability = ""
	// CapView: see configurations, versions and status.
	CapView Capability = "view"
	// CapConfigure: create and change configurations, schedules and
	// bandwidth limits; ask for a synchronization now.
	CapConfigure Capability = "configure_backup"
	// CapRestore: read versions back (listings and chunks).
	CapRestore Capability = "restore"
	// CapManageComputers: enrolment tokens, revocation.
	CapManageComputers Capability = "manage_computers"
	// CapManageUsers: portal users and their capabilities.
	CapManageUsers Capability = "manage_users"
	// CapBackup: write new versions and journal records and report the
	// agent's state. Only an agent holds it, for its own computer: no one
	// else writes a computer's history.
	CapBackup Capability = "backup"
	// CapOperate: run the appliance: companies, verify and other jobs,
	// every company.
	CapOperate Capability = "operate"
	// CapManageRetention: set retention policies and prune, the only way a
	// committed version or journal record ever leaves the catalog. No
	// agent holds it (docs/retention.md).
	CapManageRetention Capability = "manage_retention"
)

// routeCaps is the authorization table: every route of the agent API and
// the admin socket, and the capability it needs. The one middleware
// (authorize) enforces it; a route missing here is refused, and a test walks
// every registered route against it. docs/protocol.md lists it for agents.
var routeCaps = map[string]Capability{
	// Agent API (mutual TLS; the principal is the computer of the client
	// certificate).
	"/":                                         CapPublic, // unknown routes: 404
	"GET " + wire.PathHealth:                    CapPublic,
	"POST " + wire.PathEnroll:                   CapPublic, // the enrolment token is the authority
	"POST " + pair.PathJoin:                     CapPublic, // the pair's join token is the authority
	"GET " + wire.PathComputer:                  CapView,
	"PUT " + wire.PathConfigs + "{name}":        CapConfigure,
	"DELETE " + wire.PathConfigs + "{name}":     CapConfigure,
	"POST " + wire.PathSessions:                 CapBackup,
	"POST " + wire.PathSession + "{id}/lack":    CapBackup,
	"POST " + wire.PathSession + "{id}/chunks":  CapBackup,
	"POST " + wire.PathSession + "{id}/commit":  CapBackup,
	"POST " + wire.PathSession + "{id}/abort":   CapBackup,
	"POST " + wire.PathSession + "{id}/journal": CapBackup,
	"POST " + wire.PathStatus:                   CapBackup,
	"GET " + wire.PathVersions + "{config}":     CapView,
	"GET " + wire.PathJournal + "{config}":      CapView,
	"POST " + wire.PathChunks:                   CapRestore,
	"PUT " + wire.PathSettings:                  CapConfigure,
	// The command channel (ops_commands.go): only an agent polls and
	// answers, for its own computer.
	"POST " + wire.PathCommandPoll:               CapBackup,
	"POST " + wire.PathCommand + "{id}/progress": CapBackup,
	"POST " + wire.PathCommand + "{id}/result":   CapBackup,
	"GET " + wire.PathRestorePoint("{id}"):       CapRestore, // the agent's own restore command only
	"POST " + wire.PathRestoreReport:             CapRestore, // a restore the agent runs on its own, for the audit log

	// Admin socket (DATA/admin.sock, mode 0600: the principal is the
	// operator).
	"POST " + AdminCompanies:                CapOperate,
	"GET " + AdminCompanies:                 CapOperate,
	"POST " + AdminTokens:                   CapManageComputers,
	"GET " + AdminComputers:                 CapView,
	"GET " + AdminVersions:                  CapView,
	"POST " + AdminRevoke:                   CapManageComputers,
	"GET " + AdminStatus:                    CapView,
	"GET " + AdminStorage:                   CapView,
	"POST " + AdminRunNow:                   CapConfigure, // a backup command, as the portal's back up now
	"GET " + AdminCommands:                  CapView,      // and the kind's capability
	"POST " + AdminSettings:                 CapConfigure,
	"GET " + AdminQuota:                     CapView,
	"POST " + AdminQuota:                    CapOperate,
	"POST " + AdminVerify:                   CapOperate,
	"GET " + AdminRetention:                 CapManageRetention,
	"POST " + AdminRetention:                CapManageRetention,
	"POST " + AdminPrune:                    CapManageRetention,
	"GET " + AdminJobs:                      CapOperate,
	"POST " + AdminJobs:                     CapOperate, // and prune's CapManageRetention, checked by the operation
	"GET " + AdminJobs + "/{id}":            CapOperate,
	"POST " + AdminJobs + "/{id}/cancel":    CapOperate,
	"GET " + AdminJobSchedules:              CapOperate,
	"POST " + AdminJobSchedules:             CapOperate,
	"GET " + AdminMetrics:                   CapOperate,
	"GET " + AdminTape:                      CapOperate,
	"POST " + AdminTape:                     CapOperate,
	"GET " + AdminCompanies + "/{name}/key": CapOperate,
	"GET " + AdminPair:                      CapOperate,
	"POST " + AdminPair + "/token":          CapOperate,
	"POST " + AdminPair + "/remove":         CapOperate,
	// Portal users, on the admin socket (vaultctl user) and the portal
	// (the operation checks the user's company and kind).
	"GET " + AdminUsers:                       CapManageUsers,
	"POST " + AdminUsers:                      CapManageUsers,
	"POST " + AdminUsers + "/{name}/caps":     CapManageUsers,
	"POST " + AdminUsers + "/{name}/password": CapManageUsers,
	"POST " + AdminUsers + "/{name}/totp":     CapManageUsers,
	"POST " + AdminUsers + "/{name}/mail":     CapManageUsers,
	"DELETE " + AdminUsers + "/{name}":        CapManageUsers,
	// Outbound mail (vaultctl mail).
	"GET " + AdminMail:      CapOperate,
	"POST " + AdminMail:     CapOperate,
	"POST " + AdminMailTest: CapOperate,
	"POST " + AdminContact:  CapManageComputers,
	"GET " + AdminAudit:     CapView, // operators see all; the operation checks

	// The portal (HTTPS, a session cookie; every change also carries the
	// session's CSRF token). docs/api.md lists each route's answers.
	"GET /{$}":                                    CapPublic, // to /computers
	"GET /login":                                  CapPublic,
	"POST /login":                                 CapPublic, // the password is the authority
	"GET /static/{file}":                          CapPublic,
	"POST /logout":                                CapView,
	"GET /computers":                              CapView,
	"GET /account":                                CapView,
	"POST /account":                               CapView, // and the current password
	"POST " + PortalAPI + "password":              CapView, // and the current password
	"POST " + PortalAPI + "login":                 CapPublic,
	"POST " + PortalAPI + "logout":                CapView,
	"GET " + PortalAPI + "me":                     CapView,
	"GET " + PortalAPI + "status":                 CapView,
	"GET " + PortalAPI + "users":                  CapManageUsers,
	"POST " + PortalAPI + "users":                 CapManageUsers,
	"POST " + PortalAPI + "users/{name}/caps":     CapManageUsers,
	"POST " + PortalAPI + "users/{name}/password": CapManageUsers,
	"POST " + PortalAPI + "users/{name}/totp":     CapManageUsers,
	"POST " + PortalAPI + "users/{name}/mail":     CapManageUsers,
	"DELETE " + PortalAPI + "users/{name}":        CapManageUsers,
	"POST " + PortalAPI + "mail":                  CapView, // the user's own address and choice
	// Password reset by e-mail link (ops_reset.go): anonymous; the posts
	// pass CrossOriginProtection, the link's token is the authority.
	"GET /forgot":                          CapPublic,
	"POST /forgot":                         CapPublic,
	"GET /reset":                           CapPublic,
	"POST /reset":                          CapPublic,
	"POST " + PortalAPI + "password-reset": CapPublic,
	"POST " + PortalAPI + "password-reset/confirm": CapPublic,
	// Drill-down, browse, restore, audit, tokens, contacts (http_pages.go).
	"GET /computers/{computer}":                                        CapView,
	"GET " + PortalAPI + "computers/{computer}":                        CapView,
	"GET /computers/{computer}/restore":                                CapRestore,
	"GET " + PortalAPI + "computers/{computer}/configs/{config}/files": CapRestore,
	"POST " + PortalAPI + "restores":                                   CapRestore, // over the source and the target
	"GET /tokens":                                                      CapManageComputers,
	"POST " + PortalAPI + "tokens":                                     CapManageComputers,
	"GET " + PortalAPI + "tokens":                                      CapManageComputers, // unused, unexpired; never the token
	"DELETE " + PortalAPI + "tokens/{id}":                              CapManageComputers,
	"GET /users":                                                       CapManageUsers,
	"GET /audit":                                                       CapView, // operators, and user managers for their company
	"GET " + PortalAPI + "audit":                                       CapView,
	"POST " + PortalAPI + "computers/{computer}/contact":               CapManageComputers,
	// The operator's view of the appliance (http_appliance.go).
	"GET /appliance":            CapOperate,
	"GET " + PortalAPI + "pair": CapOperate,
	// The command channel and configurations (http_commands.go): the
	// operation checks the computer's scope and, for commands, the kind's
	// capability (browse: configure_backup only; a restore browses the
	// version on the vault, never the live files).
	"POST " + PortalAPI + "computers/{computer}/browse":           CapConfigure,
	"POST " + PortalAPI + "computers/{computer}/backup-now":       CapConfigure,
	"POST " + PortalAPI + "computers/{computer}/compare":          CapRestore,
	"GET " + PortalAPI + "computers/{computer}/commands":          CapView, // lists only the kinds the principal may send
	"GET " + PortalAPI + "computers/{computer}/commands/{id}":     CapView, // and the kind's capability
	"GET " + PortalAPI + "computers/{computer}/configs":           CapView,
	"PUT " + PortalAPI + "computers/{computer}/configs/{name}":    CapConfigure,
	"DELETE " + PortalAPI + "computers/{computer}/configs/{name}": CapConfigure,
	"PUT " + PortalAPI + "computers/{computer}/bandwidth":         CapConfigure,
	"GET /computers/{computer}/configure":                         CapConfigure, // the configuration wizard
}

// PrincipalKind says who a principal is.
type PrincipalKind int

// Kinds of principals.
const (
	Anonymous PrincipalKind = iota // no credentials (public routes only)
	Agent                          // a computer, by its client certificate
	Operator                       // the admin socket
	User                           // a portal user (issue 12)
)

func (k PrincipalKind) String() string {
	switch k {
	case Agent:
		return "agent"
	case Operator:
		return "operator"
	case User:
		return "user"
	}
	return "anonymous"
}

// Principal is who makes a request, with the capabilities it holds and the
// scope it holds them over.
type Principal struct {
	Kind PrincipalKind
	Name string // for the log and, later, the audit trail
	// Company is the company the principal belongs to; empty for an
	// operator, who acts on every company.
	Company string
	// Computers limits the principal to these computers of Company; nil
	// means all of them. An agent's is its own computer.
	Computers []string
	Caps      []Capability

	agent *caller // the computer and its keys, for an agent
	user  string  // the portal user's name, for a signed-in user
}

var (
	agentCaps    = []Capability{CapView, CapConfigure, CapRestore, CapBackup}
	operatorCaps = []Capability{CapView, CapConfigure, CapRestore, CapManageComputers, CapManageUsers, CapOperate, CapManageRetention}
)

func agentPrincipal(c *caller) *Principal {
	return &Principal{Kind: Agent, Name: "computer " + c.ID + " of " + c.Company, Company: c.Company,
		Computers: []string{c.ID}, Caps: agentCaps, agent: c}
}

// operator is the principal of the admin socket.
var operator = &Principal{Kind: Operator, Name: "admin socket", Caps: operatorCaps}

var anonymous = &Principal{Kind: Anonymous, Name: "anonymous"}

// Has reports whether p holds capability c (anyone holds CapPublic).
func (p *Principal) Has(c Capability) bool { return c == CapPublic || slices.Contains(p.Caps, c) }

// Covers reports whether p's scope includes the computer of company
// (computer "" asks about the whole company).
func (p *Principal) Covers(company, computer string) bool {
	switch {
	case p.Kind == Operator:
		return true
	case p.Kind == Anonymous || p.Company != company:
		return false
	case p.Computers == nil:
		return true
	}
	return computer != "" && slices.Contains(p.Computers, computer)
}

func (p *Principal) String() string { return p.Name }

// authenticator finds the principal of a request on one listener.
type authenticator func(r *http.Request) (*Principal, error)

// handlerFunc is a route's handler: it decodes, calls an operation with
// the principal, and encodes.
type handlerFunc func(w http.ResponseWriter, r *http.Request, p *Principal) error

// router registers routes behind the authorization middleware and
// remembers them, so a test can walk them against the table.
type router struct {
	v        *Vault
	mux      *http.ServeMux
	authn    authenticator
	patterns []string
	// onErr answers a refused or failed request; nil: writeErr (JSON).
	// The portal's pages send a signed-out browser to the sign-in page.
	onErr func(w http.ResponseWriter, r *http.Request, err error)
}

func (v *Vault) newRouter(authn authenticator) *router {
	return &router{v: v, mux: http.NewServeMux(), authn: authn}
}

func (rt *router) handle(pattern string, h handlerFunc) {
	rt.patterns = append(rt.patterns, pattern)
	onErr := rt.onErr
	if onErr == nil {
		onErr = rt.v.writeErr
	}
	rt.mux.Handle(pattern, rt.v.authorize(pattern, rt.authn, h, onErr))
}

// handler returns the routes with request ids.
func (rt *router) handler() http.Handler { return withRequestID(rt.mux) }

// authorize is the one authorization middleware: it looks the route up in
// routeCaps, authenticates the request when the route needs a capability,
// and refuses a principal that does not hold it. Scope (which company,
// which computer) is the operation's to check, since only it knows the
// object.
func (v *Vault) authorize(pattern string, authn authenticator, h handlerFunc, onErr func(http.ResponseWriter, *http.Request, error)) http.Handler {
	need, listed := routeCaps[pattern]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := func() error {
			if !listed {
				return fail(http.StatusForbidden, wire.CodeForbidden, "route %s is not in the vault's authorization table: refused", pattern)
			}
			p := anonymous
			if need != CapPublic {
				var err error
				if p, err = authn(r); err != nil {
					return err
				}
				info(r).principal = p.String()
				if !p.Has(need) {
					return fail(http.StatusForbidden, wire.CodeForbidden, "%s lacks the %q capability that %s needs", p, need, pattern)
				}
			}
			if !audited(r.Method, need, p) {
				return h(w, r, p)
			}
			sw := &statusWriter{ResponseWriter: w}
			if err := h(sw, r, p); err != nil {
				return err
			}
			if sw.status < 400 { // a page may answer a refusal itself
				v.auditRequest(r, p)
			}
			return nil
		}()
		if err != nil {
			onErr(w, r, err)
		}
	})
}
