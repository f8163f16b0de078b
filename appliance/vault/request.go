package vault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"

	"vaultnode/internal/wire"
)

// requestInfo follows one request through the layers: the id the vault
// gave it (in the X-Request-Id header of the answer and in every log line
// about it) and, once authenticated, who made it.
type requestInfo struct {
	id        string
	principal string // empty until authenticated
	// note is what the operation tells the audit log about a change
	// (ops_audit.go).
	note auditNote
}

type requestKey struct{}

// withRequestID gives every request an id, sends it in the X-Request-Id
// header of every answer, and keeps it in the request's context. The id is
// always the vault's own: one sent by a client is ignored, so a client
// cannot forge lines in the vault's log.
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ri := &requestInfo{id: newRequestID()}
		w.Header().Set(wire.HeaderRequestID, ri.id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestKey{}, ri)))
	})
}

// info returns the request's info.
func info(r *http.Request) *requestInfo { return requestOf(r.Context()) }

// requestOf returns the info of the request ctx belongs to, so an
// operation can name the request in the log; a context that did not come
// through withRequestID (a test calling an operation) gets a fresh id.
func requestOf(ctx context.Context) *requestInfo {
	if ri, ok := ctx.Value(requestKey{}).(*requestInfo); ok {
		return ri
	}
	return &requestInfo{id: newRequestID()}
}

// newRequestID returns 16 hex digits: unique enough to find one request in
// a log, short enough to read out over the phone.
func newRequestID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// route names the request's route for the log: the pattern it matched, or
// its method and path when none did.
func route(r *http.Request) string {
	if r.Pattern != "" {
		return r.Pattern
	}
	return r.Method + " " + r.URL.Path
}
