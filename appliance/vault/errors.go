package vault

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// apiError is an operation's refusal: the wire code a client acts on, the
// message a person reads (what went wrong and what to do), and the HTTP
// status every listener answers it with. Any other error an operation
// returns is the vault's own fault and reaches clients only as "internal"
// with a request id (writeErr).
type apiError struct {
	status     int
	code       string
	msg        string
	retryAfter time.Duration // busy answers: when to try again
}

func (e *apiError) Error() string { return e.msg }

func fail(status int, code, format string, args ...any) error {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// catalogErr turns the catalog's refusals into answers; anything else stays
// an internal error.
func catalogErr(err error) error {
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		return fail(http.StatusNotFound, wire.CodeNotFound, "%v", err)
	case errors.Is(err, catalog.ErrExists), errors.Is(err, catalog.ErrInvalid):
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	return err
}
