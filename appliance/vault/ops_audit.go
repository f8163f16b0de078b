package vault

import (
	"context"
	"net/http"
	"strings"
	"unicode/utf8"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
)

// The audit log (issue 12): every change and every restore, with who made
// it, from where, when and on what. The one authorization middleware
// records each successful request that changes something (audited), so no
// route can forget it; the operation it called has noted the company and
// computer it touched (computerFor, companyFor and userFor do so), and may
// add words. Entries are catalog commands; the catalog keeps the newest
// catalog.MaxAudit (docs/format.md).

// auditNote is what an operation says about the change it made.
type auditNote struct {
	company, computer string
	detail            string
	// principal and kind replace the middleware's principal on a public
	// route: the user a sign-in signed in, the token an enrolment used.
	principal, kind string
}

// noteTarget records the company and computer a change touches: the first
// of each noted wins (a restore notes its source before its target).
func noteTarget(ctx context.Context, company, computer string) {
	n := &requestOf(ctx).note
	if n.company == "" {
		n.company = company
	}
	if n.computer == "" {
		n.computer = computer
	}
}

// noteDetail adds words to the request's audit entry.
func noteDetail(ctx context.Context, detail string) {
	n := &requestOf(ctx).note
	if n.detail != "" {
		n.detail += "; "
	}
	n.detail += detail
}

// noteActor names who acted on a public route.
func noteActor(ctx context.Context, principal, kind string) {
	n := &requestOf(ctx).note
	n.principal, n.kind = principal, kind
}

// audited says which successful requests the audit log records: every
// change (any method but GET and HEAD) by a person or the operator, and an
// agent's changes to its configurations and settings; not an agent's own
// backups, reports and chunk reads, which are its history, not changes.
func audited(method string, need Capability, p *Principal) bool {
	if method == http.MethodGet || method == http.MethodHead {
		return false
	}
	if p.Kind == Agent {
		return need == CapConfigure
	}
	return true
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// maxDetail bounds an entry's detail, so an entry stays far under
// catalog.MaxAuditEntry.
const maxDetail = 1024

// auditRequest writes the audit entry of a request that changed
// something. The change is made: a failure to record it goes to the log.
func (v *Vault) auditRequest(r *http.Request, p *Principal) {
	ri := info(r)
	n := ri.note
	e := catalog.AuditEntry{Time: v.clk.Now(), Principal: p.Name, Kind: p.Kind.String(), From: r.RemoteAddr,
		Company: n.company, Computer: n.computer, Action: r.Pattern, Request: ri.id}
	if n.principal != "" {
		e.Principal, e.Kind = n.principal, n.kind
	}
	if e.Company == "" {
		e.Company = p.Company
	}
	if host := clientAddr(r); host != "" && host != "@" {
		e.From = host
	} else {
		e.From = "admin socket"
	}
	e.Detail = r.URL.Path
	if n.detail != "" {
		e.Detail += ": " + n.detail
	}
	e.Detail = truncate(e.Detail, maxDetail)
	e.Principal = truncate(e.Principal, 256)
	if err := v.Catalog.Audit(e); err != nil {
		v.log.Error("write audit entry", zap.String("request_id", ri.id), zap.String("route", e.Action),
			zap.String("principal", e.Principal), zap.Error(err))
	}
}

// truncate shortens s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n-3]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

// Audit log answers.
const (
	DefaultAuditPage = 100
	MaxAuditPage     = 1000
)

// AuditPage is a page of the audit log, newest first; Next, when not 0, is
// the before of the next (older) page.
type AuditPage struct {
	Entries []catalog.AuditEntry `json:"entries"`
	Next    uint64               `json:"next,omitempty"`
}

// AuditLog reads the entries p may see older than before (0: the newest),
// at most limit, of company (empty: all p may see) and containing text
// (case-insensitive; empty: any). Operators see every entry; a company
// user with manage_users over the whole company sees its company's.
func (v *Vault) AuditLog(ctx context.Context, p *Principal, company string, before uint64, limit int, text string) (AuditPage, error) {
	if p.Kind != Operator {
		if company == "" {
			company = p.Company
		}
		if err := manageUser(p, catalog.UserCompany, company); err != nil {
			return AuditPage{}, err
		}
	}
	if limit <= 0 {
		limit = DefaultAuditPage
	}
	limit = min(limit, MaxAuditPage)
	text = strings.ToLower(text)
	out := AuditPage{Entries: []catalog.AuditEntry{}}
	scanned := 0
	err := v.Catalog.AuditLog(before, func(e catalog.AuditEntry) bool {
		scanned++
		if (company == "" || e.Company == company) && (text == "" || matchesAudit(e, text)) {
			out.Entries = append(out.Entries, e)
		}
		if len(out.Entries) == limit || scanned == maxAuditScan {
			if e.Seq > 1 {
				out.Next = e.Seq
			}
			return false
		}
		return ctx.Err() == nil
	})
	return out, err
}

// maxAuditScan bounds the entries one page reads, whatever its filter
// matches: a page that found fewer than asked says where to go on (Next).
const maxAuditScan = 20000

func matchesAudit(e catalog.AuditEntry, text string) bool {
	for _, f := range []string{e.Principal, e.From, e.Company, e.Computer, e.Action, e.Detail} {
		if strings.Contains(strings.ToLower(f), text) {
			return true
		}
	}
	return false
}

// Flush lets a streaming handler flush through the writer.
func (w *statusWriter) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }
