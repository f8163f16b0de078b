package vault

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/store"
	"vaultnode/internal/limit"
	"vaultnode/internal/wire"
)

// The HTTP side of the vault: the agent API (http_agent.go) and the admin
// socket (http_admin.go) decode a request, call an operation (ops_*.go)
// with the principal the authorization middleware (authz.go) found, and
// encode its answer. Nothing here decides what is allowed or valid.

// writeErr answers a failed request. A refusal (apiError) goes to the
// client as it is; any other error is the vault's own fault: the client gets
// a code and the request's id, and the log gets the error with the id, the
// route and the principal. Internal error text never reaches a client.
func (v *Vault) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	ri := info(r)
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, catalog.ErrNotLeader) && v.pair != nil:
		// Leadership moved during the request: the change was not made.
		errors.As(v.notLeader(), &ae)
	case errors.Is(err, syscall.EIO):
		v.log.Error("request failed: storage I/O error", zap.String("request_id", ri.id), zap.String("route", route(r)),
			zap.String("principal", ri.principal), zap.Error(err))
		ae = errStorageIO
	case errors.Is(err, store.ErrNoSpace):
		v.log.Warn("request refused: disk full", zap.String("request_id", ri.id), zap.String("route", route(r)),
			zap.String("principal", ri.principal), zap.Error(err))
		ae = &apiError{status: http.StatusInsufficientStorage, code: wire.CodeNoSpace, msg: "the vault's data disk is full; tell the vault's administrator"}
	default:
		v.log.Error("request failed", zap.String("request_id", ri.id), zap.String("route", route(r)),
			zap.String("principal", ri.principal), zap.Error(err))
		ae = &apiError{status: http.StatusInternalServerError, code: wire.CodeInternal,
			msg: fmt.Sprintf("internal error (request id %s); the vault's log has the details", ri.id)}
	}
	setRetryAfter(w, ae.retryAfter)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.status)
	json.NewEncoder(w).Encode(wire.Error{Code: ae.code, Message: ae.msg, RequestID: ri.id})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// writeStatusJSON answers the status rows p may see of company as a JSON
// array, streamed: the head and each batch of rows go out as they are
// computed, so the first byte does not wait for the last row. An error
// before the head is an ordinary error answer; one after it cuts the
// connection, so a client never takes a partial array for the whole.
func (v *Vault) writeStatusJSON(w http.ResponseWriter, r *http.Request, p *Principal, company string) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	rc := http.NewResponseController(w)
	head, n := false, 0
	err := v.StatusEachOf(r.Context(), p, company, func(rows []ConfigStatus) error {
		if !head {
			head = true
			w.Header().Set("Content-Type", "application/json")
			bw.WriteByte('[')
		}
		for i := range rows {
			b, err := json.Marshal(&rows[i])
			if err != nil {
				return fmt.Errorf("encode status row: %w", err)
			}
			if n > 0 {
				bw.WriteByte(',')
			}
			n++
			bw.Write(b)
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		rc.Flush()
		return nil
	})
	if err != nil {
		if !head {
			return err
		}
		v.log.Warn("status answer cut short", zap.Error(err))
		panic(http.ErrAbortHandler)
	}
	bw.WriteString("]\n")
	return bw.Flush()
}

// readJSON decodes a JSON body of at most wire.MaxJSONBody bytes with no
// unknown fields.
func readJSON(r *http.Request, v any) error {
	err := wire.DecodeJSON(r.Body, wire.MaxJSONBody, "wire.MaxJSONBody", v, true)
	if le, ok := limit.As(err); ok {
		if le.Limit == "wire.MaxJSONBody" {
			return fail(http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "request body over %d bytes", wire.MaxJSONBody)
		}
		return fail(http.StatusBadRequest, wire.CodeLimit, "request over a limit: %v", err)
	}
	if errors.Is(err, wire.ErrJSON) {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "malformed JSON request: %v", err)
	}
	if err != nil {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "read request: %v", err)
	}
	return nil
}

// readBody reads a body of at most max bytes.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength > max {
		return nil, fail(http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "request body of %d bytes is over the %d limit", r.ContentLength, max)
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return nil, fail(http.StatusBadRequest, wire.CodeBadRequest, "read request: %v", err)
	}
	if int64(len(b)) > max {
		return nil, fail(http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "request body is over the %d limit", max)
	}
	return b, nil
}

// readIDs reads a body of at most max 32-byte chunk ids.
func readIDs(r *http.Request, max int) ([][32]byte, error) {
	body, err := readBody(r, int64(max)*32)
	if err != nil {
		return nil, err
	}
	ids, err := wire.ParseIDs(body, max)
	if err != nil {
		return nil, fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	return ids, nil
}
