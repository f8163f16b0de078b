// Package limit is the error every bounded decoder of vaultnode returns when
// an input breaks one of its documented limits (docs/protocol.md, "Limits").
// The limits themselves are constants of the packages that own the formats
// (internal/tree, internal/wire); this package only names them, so a caller
// can tell "over a limit" from "malformed" and answer with the right code.
package limit

import (
	"errors"
	"fmt"
)

// ErrExceeded is wrapped by every *Error.
var ErrExceeded = errors.New("over a documented limit")

// Error says which limit an input broke. Got is what the input declared or
// held when the decoder stopped: for a length declared in a header it is the
// declared value, read before anything was allocated.
type Error struct {
	Limit string // the constant's name, e.g. "tree.MaxPathLen"
	What  string // what broke it, e.g. "node path"
	Max   uint64
	Got   uint64
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s of %d is over the limit %s = %d", e.What, e.Got, e.Limit, e.Max)
}

// Unwrap makes errors.Is(err, ErrExceeded) true.
func (e *Error) Unwrap() error { return ErrExceeded }

// New returns an *Error.
func New(lim, what string, got, max uint64) error {
	return &Error{Limit: lim, What: what, Max: max, Got: got}
}

// Check returns an *Error when got > max, else nil.
func Check(lim, what string, got, max uint64) error {
	if got > max {
		return New(lim, what, got, max)
	}
	return nil
}

// As returns the *Error in err's chain, if any.
func As(err error) (*Error, bool) {
	var le *Error
	ok := errors.As(err, &le)
	return le, ok
}
