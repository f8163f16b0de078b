package vault

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/pki"
	"vaultnode/appliance/store"
	"vaultnode/internal/bandwidth"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/schedule"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// session is an open synchronization of one configuration.
type session struct {
	id       string
	company  string
	computer string
	config   string
	previous uint64
	started  time.Time

	mu         sync.Mutex
	lastUsed   time.Time
	chunksSent int64
	bytesSent  int64
}

// apiError is an error with its HTTP status and wire code.
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

// writeErr answers a failed request. A refusal (apiError) goes to the
// client as it is; any other error is the vault's own fault: the client gets
// a code and the request's id, and the log gets the error with the id, the
// route and the principal. Internal error text never reaches a client.
func (v *Vault) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	ri := info(r)
	var ae *apiError
	switch {
	case errors.As(err, &ae):
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

func readJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, wire.MaxJSONBody+1))
	if err != nil {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "read request: %v", err)
	}
	if len(b) > wire.MaxJSONBody {
		return fail(http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "request body over %d bytes", wire.MaxJSONBody)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "malformed JSON request: %v", err)
	}
	return nil
}

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

// caller is the authenticated computer of a request.
type caller struct {
	catalog.Computer
	keys *companyKeys
}

// authenticateAgent is the agent API's authenticator: the principal is the
// computer of the client certificate.
func (v *Vault) authenticateAgent(r *http.Request) (*Principal, error) {
	c, err := v.authenticate(r)
	if err != nil {
		return nil, err
	}
	return agentPrincipal(c), nil
}

func (v *Vault) authenticate(r *http.Request) (*caller, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, fail(http.StatusUnauthorized, wire.CodeUnauthorized, "no client certificate: enrol this computer with `vault-agent enroll`")
	}
	cert := r.TLS.PeerCertificates[0]
	cp, err := v.Catalog.Computer(cert.Subject.CommonName)
	if err != nil {
		return nil, fail(http.StatusForbidden, wire.CodeUnauthorized, "computer %q is unknown to this vault: enrol it again with a new token", cert.Subject.CommonName)
	}
	if cp.Revoked != nil {
		return nil, fail(http.StatusForbidden, wire.CodeRevoked, "computer %s (%s) was revoked on %s: ask the vault administrator for a new enrolment token", cp.Name, cp.ID, cp.Revoked.Format(time.RFC3339))
	}
	if cp.Fingerprint != "" && cp.Fingerprint != pki.Fingerprint(cert.Raw) {
		return nil, fail(http.StatusForbidden, wire.CodeUnauthorized, "certificate of %s is not the one it enrolled with", cp.ID)
	}
	v.Catalog.Seen(cp.ID, v.clk.Now()) // every authenticated request is contact (kept in memory, written in batches)
	k, err := v.companyKeys(cp.Company)
	if err != nil {
		return nil, err
	}
	return &caller{Computer: cp, keys: k}, nil
}

func (v *Vault) agentRoutes(authn authenticator) *router {
	rt := v.newRouter(authn)
	rt.handle("GET "+wire.PathHealth, func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		writeJSON(w, map[string]any{"status": "ok", "time": v.clk.Now().UTC()})
		return nil
	})
	rt.handle("POST "+wire.PathEnroll, func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		return v.enroll(w, r)
	})
	rt.handle("GET "+wire.PathComputer, agentOnly(v.computer))
	rt.handle("PUT "+wire.PathConfigs+"{name}", agentOnly(v.putConfig))
	rt.handle("DELETE "+wire.PathConfigs+"{name}", agentOnly(v.deleteConfig))
	rt.handle("POST "+wire.PathSessions, agentOnly(v.openSession))
	rt.handle("POST "+wire.PathSession+"{id}/lack", agentOnly(v.lack))
	rt.handle("POST "+wire.PathSession+"{id}/chunks", agentOnly(v.upload))
	rt.handle("POST "+wire.PathSession+"{id}/commit", agentOnly(v.commit))
	rt.handle("POST "+wire.PathSession+"{id}/abort", agentOnly(v.abort))
	rt.handle("POST "+wire.PathSession+"{id}/journal", agentOnly(v.journal))
	rt.handle("GET "+wire.PathVersions+"{config}", agentOnly(v.versions))
	rt.handle("GET "+wire.PathJournal+"{config}", agentOnly(v.listJournal))
	rt.handle("POST "+wire.PathStatus, agentOnly(v.report))
	rt.handle("PUT "+wire.PathSettings, agentOnly(v.putSettings))
	rt.handle("POST "+wire.PathChunks, agentOnly(v.getChunks))
	rt.handle("/", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		return fail(http.StatusNotFound, wire.CodeNotFound, "no such API: %s %s", r.Method, r.URL.Path)
	})
	return rt
}

func (v *Vault) agentHandler() http.Handler {
	rt := v.agentRoutes(v.authenticateAgent)
	return withRequestID(v.guard(rt.mux)) // guard: deadlines and enrolment rate (deadline.go)
}

func (v *Vault) enroll(w http.ResponseWriter, r *http.Request) error {
	var req wire.EnrollRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	tok, err := wire.ParseToken(req.Token)
	if err != nil {
		return fail(http.StatusBadRequest, wire.CodeBadToken, "%v", err)
	}
	name := strings.TrimSpace(req.Hostname)
	if name == "" || len(name) > 253 {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "hostname must be 1 to 253 characters")
	}
	var certPEM []byte
	cp, err := v.Catalog.Enroll(tok.Secret[:], v.clk.Now(), func(company string) (catalog.Computer, error) {
		id := catalog.NewComputerID()
		var fp string
		var err error
		certPEM, fp, err = v.CA.SignComputer(req.CSR, id, company, v.clk.Now())
		if err != nil {
			return catalog.Computer{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
		}
		return catalog.Computer{ID: id, Company: company, Name: name, Fingerprint: fp, Enrolled: v.clk.Now()}, nil
	})
	if errors.Is(err, catalog.ErrToken) {
		return fail(http.StatusForbidden, wire.CodeBadToken, "enrolment token is unknown, already used or expired: create a new one with `vaultctl token create COMPANY`")
	}
	if err != nil {
		return err
	}
	v.log.Info("computer enrolled", zap.String("id", cp.ID), zap.String("name", cp.Name), zap.String("company", cp.Company))
	writeJSON(w, wire.EnrollResponse{ComputerID: cp.ID, Company: cp.Company, Certificate: certPEM, CA: v.CA.CAPEM})
	return nil
}

func (v *Vault) computer(w http.ResponseWriter, r *http.Request, c *caller) error {
	cfgs, err := v.Catalog.Configs(c.ID)
	if err != nil {
		return err
	}
	writeJSON(w, wire.Computer{ID: c.ID, Name: c.Name, Company: c.Company,
		ChunkKey: c.keys.set.ChunkID[:], GearKey: c.keys.set.Gear[:], Configs: cfgs, Settings: c.Settings})
	return nil
}

func (v *Vault) putConfig(w http.ResponseWriter, r *http.Request, c *caller) error {
	var cfg wire.Config
	if err := readJSON(r, &cfg); err != nil {
		return err
	}
	cfg.Name = r.PathValue("name")
	if err := validateConfig(&cfg); err != nil {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	out, err := v.Catalog.PutConfig(c.ID, cfg, v.clk.Now())
	if errors.Is(err, catalog.ErrInvalid) {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	if err != nil {
		return err
	}
	writeJSON(w, out)
	return nil
}

func validateConfig(cfg *wire.Config) error {
	switch cfg.Kind {
	case "":
		cfg.Kind = wire.KindFiles
		fallthrough
	case wire.KindFiles:
		if len(cfg.Paths) == 0 {
			return errors.New("a files configuration needs at least one path")
		}
		for _, p := range cfg.Paths {
			if !strings.HasPrefix(p, "/") {
				return fmt.Errorf("path %q is not absolute", p)
			}
		}
	case wire.KindDatabase:
		if len(cfg.Command) == 0 {
			return errors.New("a database configuration needs a dump command")
		}
		if cfg.Snapshot != wire.SnapshotNone {
			return errors.New("a database configuration cannot use a filesystem snapshot: its dump command gives the consistent copy")
		}
	case wire.KindSystem:
		if len(cfg.Paths) > 0 || len(cfg.Command) > 0 {
			return errors.New("a system configuration chooses its own paths: give neither paths nor a command")
		}
	default:
		return fmt.Errorf("unknown configuration kind %q (want %q, %q or %q)", cfg.Kind, wire.KindFiles, wire.KindDatabase, wire.KindSystem)
	}
	switch cfg.Snapshot {
	case wire.SnapshotNone, wire.SnapshotBtrfs:
	default:
		return fmt.Errorf("unknown snapshot kind %q (want %q or none)", cfg.Snapshot, wire.SnapshotBtrfs)
	}
	return validateTiming(cfg)
}

// validateTiming checks a configuration's mode, schedule and interval.
func validateTiming(cfg *wire.Config) error {
	switch cfg.Mode {
	case "":
		cfg.Mode = wire.ModeScheduled
	case wire.ModeScheduled:
	case wire.ModeContinuous:
		if cfg.Kind != wire.KindFiles {
			return errors.New("only files configurations can be continuous")
		}
		if cfg.Snapshot != wire.SnapshotNone {
			return errors.New("a continuous configuration reads changes as they happen; a snapshot applies only to scheduled ones")
		}
	default:
		return fmt.Errorf("unknown mode %q (want %q or %q)", cfg.Mode, wire.ModeScheduled, wire.ModeContinuous)
	}
	if cfg.Schedule == "" {
		cfg.Schedule = "24x7"
	}
	if _, err := schedule.Parse(cfg.Schedule); err != nil {
		return err
	}
	if cfg.Interval != "" {
		if d, err := time.ParseDuration(cfg.Interval); err != nil || d < time.Second {
			return fmt.Errorf("interval %q: want a duration of at least 1s such as 30m or 24h", cfg.Interval)
		}
	}
	return nil
}

func (v *Vault) deleteConfig(w http.ResponseWriter, r *http.Request, c *caller) error {
	err := v.Catalog.DeleteConfig(c.ID, r.PathValue("name"))
	if errors.Is(err, catalog.ErrNotFound) {
		return fail(http.StatusNotFound, wire.CodeNotFound, "%v", err)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (v *Vault) openSession(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req wire.OpenSession
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if _, err := v.Catalog.Config(c.ID, req.Config); err != nil {
		return fail(http.StatusNotFound, wire.CodeNotFound, "configuration %q does not exist for this computer: create it first", req.Config)
	}
	prev, err := v.Catalog.LastSeq(c.ID, req.Config)
	if err != nil {
		return err
	}
	var b [16]byte
	rand.Read(b[:])
	now := v.clk.Now()
	s := &session{id: hex.EncodeToString(b[:]), company: c.Company, computer: c.ID, config: req.Config,
		previous: prev, started: now, lastUsed: now}
	v.smu.Lock()
	for id, old := range v.sessions {
		if old.computer == c.ID && old.config == req.Config {
			delete(v.sessions, id) // the agent restarted: the new session replaces the old
		}
	}
	v.capSessionsLocked(c.ID) // limits.go
	v.sessions[s.id] = s
	v.smu.Unlock()
	writeJSON(w, wire.Session{ID: s.id, Previous: prev, Expires: now.Add(v.opts.SessionTTL)})
	return nil
}

func (v *Vault) session(r *http.Request, c *caller) (*session, error) {
	v.smu.Lock()
	s := v.sessions[r.PathValue("id")]
	v.smu.Unlock()
	if s == nil || s.computer != c.ID {
		return nil, fail(http.StatusNotFound, wire.CodeUnknownSession, "unknown session %q (expired, finished or replaced): open a new session", r.PathValue("id"))
	}
	s.mu.Lock()
	s.lastUsed = v.clk.Now()
	s.mu.Unlock()
	return s, nil
}

func (v *Vault) expireSessions(ctx interface{ Done() <-chan struct{} }) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-v.clk.After(time.Minute):
		}
		now := v.clk.Now()
		v.smu.Lock()
		for id, s := range v.sessions {
			s.mu.Lock()
			idle := now.Sub(s.lastUsed)
			s.mu.Unlock()
			if idle > v.opts.SessionTTL {
				delete(v.sessions, id)
			}
		}
		v.smu.Unlock()
	}
}

func (v *Vault) lack(w http.ResponseWriter, r *http.Request, c *caller) error {
	s, err := v.session(r, c)
	if err != nil {
		return err
	}
	body, err := readBody(r, wire.MaxLackIDs*32)
	if err != nil {
		return err
	}
	ids, err := wire.ParseIDs(body, wire.MaxLackIDs)
	if err != nil {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	has, err := v.Store.Has(s.company, ids)
	if err != nil {
		return err
	}
	bitmap := make([]byte, (len(ids)+7)/8)
	for i, h := range has {
		if !h {
			bitmap[i/8] |= 1 << (i % 8)
		}
	}
	w.Header().Set("Content-Type", wire.MediaFrames)
	w.Write(bitmap)
	return nil
}

// uploadBuffers are an upload request's working buffers: the frame as
// read, its plaintext, its sealed entry. Reused, they spare the collector
// three chunk-sized allocations per chunk.
type uploadBuffers struct{ frame, plain, sealed []byte }

var uploadBufs = sync.Pool{New: func() any { return new(uploadBuffers) }}

func (v *Vault) upload(w http.ResponseWriter, r *http.Request, c *caller) error {
	s, err := v.session(r, c)
	if err != nil {
		return err
	}
	release, err := v.uploads.acquire(r.Context(), c.Company, c.ID) // fair slots (limits.go)
	if err != nil {
		return err
	}
	defer release()
	// The body is processed as it arrives, one chunk at a time: each is
	// verified, sealed and appended past the pack's committed length, and
	// the whole request is committed at the end or cut off at the first
	// bad chunk. A request holds about three chunks of memory, whatever
	// its size.
	if r.ContentLength > wire.MaxUploadBody {
		return fail(http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "request body of %d bytes is over the %d limit", r.ContentLength, wire.MaxUploadBody)
	}
	body := &limitedBody{r: r.Body, left: wire.MaxUploadBody}
	bufs := uploadBufs.Get().(*uploadBuffers)
	fr := wire.NewFrameReaderBuffer(body, bufs.frame)
	scratch, sealed := bufs.plain, bufs.sealed
	defer func() {
		bufs.frame, bufs.plain, bufs.sealed = fr.Buffer(), scratch[:0], sealed[:0]
		uploadBufs.Put(bufs)
	}()
	h := keys.NewHasher(c.keys.set.ChunkID)
	app, err := v.Store.Append(s.company)
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			app.Abort()
		}
	}()
	var sent int64
	for {
		f, err := fr.Next()
		if err == io.EOF {
			break
		}
		if body.over {
			return fail(http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "request body is over the %d limit", wire.MaxUploadBody)
		}
		if err != nil {
			return fail(http.StatusBadRequest, wire.CodeBadRequest, "upload: %v; nothing of this request was stored", err)
		}
		if f.Kind != wire.FrameData && f.Kind != wire.FrameListing {
			return fail(http.StatusBadRequest, wire.CodeBadRequest, "upload: chunk %x has unknown kind %d", f.ID[:8], f.Kind)
		}
		plain := f.Payload // checked as is unless compressed (or lying about its length)
		if f.Flags != 0 || uint32(len(f.Payload)) != f.PlainLen {
			scratch, err = wire.Decompress(scratch[:0], f.Flags, f.Payload, f.PlainLen)
			if err != nil {
				return fail(http.StatusBadRequest, wire.CodeBadRequest, "upload: chunk %x: %v", f.ID[:8], err)
			}
			plain = scratch
		}
		if h.Sum(plain) != f.ID {
			return fail(http.StatusUnprocessableEntity, wire.CodeMismatch, "upload: chunk %x: content does not match its id; nothing of this request was stored", f.ID[:8])
		}
		sent += int64(len(f.Payload))
		if has, err := v.Store.Has(s.company, [][32]byte{f.ID}); err != nil {
			return err
		} else if has[0] {
			continue // already stored (a retry, or another session): append nothing
		}
		eh := pack.EntryHeader{Kind: pack.Kind(f.Kind), Flags: f.Flags, ID: f.ID, PlainLen: f.PlainLen}
		sealed = pack.AppendEntry(sealed[:0], c.keys.aead, &eh, f.Payload)
		if err := app.Add(eh, sealed); err != nil {
			return err
		}
	}
	n := app.Len()
	committed = true
	if err := app.Commit(); err != nil {
		return err
	}
	s.mu.Lock()
	s.chunksSent += int64(n)
	s.bytesSent += sent
	s.mu.Unlock()
	writeJSON(w, map[string]int{"stored": n})
	return nil
}

// limitedBody reads at most left bytes and remembers whether the body
// went over.
type limitedBody struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.left <= 0 {
		var one [1]byte
		if n, _ := l.r.Read(one[:]); n > 0 {
			l.over = true
			return 0, errors.New("request body over the limit")
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

func (v *Vault) abort(w http.ResponseWriter, r *http.Request, c *caller) error {
	s, err := v.session(r, c)
	if err != nil {
		return err
	}
	v.smu.Lock()
	delete(v.sessions, s.id)
	v.smu.Unlock()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (v *Vault) commit(w http.ResponseWriter, r *http.Request, c *caller) error {
	s, err := v.session(r, c)
	if err != nil {
		return err
	}
	release, err := v.uploads.acquire(r.Context(), c.Company, c.ID) // fair slots (limits.go)
	if err != nil {
		return err
	}
	defer release()
	var req wire.Commit
	if err := readJSON(r, &req); err != nil {
		return err
	}
	totals, err := v.checkListing(r, s.company, c.keys, req.Listing)
	if err != nil {
		return err
	}
	s.mu.Lock()
	totals.ChunksSent, totals.BytesSent = s.chunksSent, s.bytesSent
	s.mu.Unlock()
	last, err := v.Catalog.LastSeq(c.ID, s.config)
	if err != nil {
		return err
	}
	started := req.Started
	if started.IsZero() {
		started = s.started
	}
	m := wire.Manifest{Magic: wire.ManifestMagic, Company: s.company, Computer: c.ID, Config: s.config,
		Seq: last + 1, Started: started.UTC(), Finished: v.clk.Now().UTC(), Listing: req.Listing, Totals: totals}
	mb, err := tree.Marshal(&m)
	if err != nil {
		return err
	}
	eh := pack.EntryHeader{Kind: pack.KindManifest, ID: keys.NewHasher(c.keys.set.ChunkID).Sum(mb), PlainLen: uint32(len(mb))}
	data := pack.AppendEntry(nil, c.keys.aead, &eh, mb)
	if err := v.Store.Put(s.company, []store.Entry{{Header: eh, Data: data}}); err != nil {
		return err
	}
	if err := v.Catalog.AddVersion(m, eh.ID); err != nil {
		return err
	}
	v.smu.Lock()
	delete(v.sessions, s.id)
	v.smu.Unlock()
	v.log.Info("version committed", zap.String("computer", c.ID), zap.String("config", s.config), zap.Uint64("seq", m.Seq),
		zap.Int64("files", totals.Files), zap.Int64("bytes", totals.Bytes), zap.Int64("bytes_sent", totals.BytesSent))
	writeJSON(w, wire.Committed{Seq: m.Seq})
	return nil
}

// checkListing reads a version's listing and checks that every chunk it
// references is in the store; it returns the version's totals, computed
// from the listing itself.
func (v *Vault) checkListing(r *http.Request, company string, k *companyKeys, listing []tree.ChunkRef) (wire.Totals, error) {
	var t wire.Totals
	if len(listing) == 0 {
		return t, fail(http.StatusBadRequest, wire.CodeBadRequest, "commit: empty listing")
	}
	lr := v.listingReader(company, k, listing)
	defer lr.Close() // stops the reader's goroutine when we return early
	rd, err := tree.NewListingReader(lr, listing)
	if err != nil {
		return t, listingErr(err)
	}
	var pending [][32]byte
	check := func() error {
		if len(pending) == 0 {
			return nil
		}
		has, err := v.Store.Has(company, pending)
		if err != nil {
			return err
		}
		for i, h := range has {
			if !h {
				return fail(http.StatusConflict, wire.CodeMissingChunk, "commit: the listing references chunk %x that the vault lacks: upload it first", pending[i][:8])
			}
		}
		pending = pending[:0]
		return nil
	}
	for {
		if err := r.Context().Err(); err != nil {
			return t, err
		}
		n, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return t, listingErr(err)
		}
		switch n.Type {
		case tree.TypeFile:
			t.Files++
			t.Bytes += n.Size
		case tree.TypeDir:
			t.Dirs++
		case tree.TypeDeleted:
			t.Deleted++
		}
		switch n.Status {
		case tree.StatusUnreadable:
			t.Unreadable++
		case tree.StatusInconsistent:
			t.Inconsistent++
		}
		for _, c := range n.Chunks {
			pending = append(pending, c.ID)
		}
		if len(pending) >= 4096 {
			if err := check(); err != nil {
				return t, err
			}
		}
	}
	return t, check()
}

func listingErr(err error) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return err
	}
	var se *storeReadError
	if errors.As(err, &se) {
		if errors.Is(err, store.ErrNotFound) {
			return fail(http.StatusConflict, wire.CodeMissingChunk, "commit: listing chunk %x is missing: upload it first", se.id[:8])
		}
		return err // the vault could not read its own store: internal, logged
	}
	return fail(http.StatusBadRequest, wire.CodeBadRequest, "commit: bad listing: %v", err)
}

// storeReadError is the vault failing to read a listing chunk from its
// store, as opposed to the listing being bad.
type storeReadError struct {
	id  [32]byte
	err error
}

func (e *storeReadError) Error() string { return fmt.Sprintf("listing chunk %x: %v", e.id[:8], e.err) }
func (e *storeReadError) Unwrap() error { return e.err }

// listingReader streams the plaintext of a listing's chunks. The caller
// closes it, which also ends its goroutine.
func (v *Vault) listingReader(company string, k *companyKeys, refs []tree.ChunkRef) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		h := keys.NewHasher(k.set.ChunkID)
		var buf, plain []byte
		for _, ref := range refs {
			var err error
			var loc store.Location
			buf, loc, err = v.Store.Get(company, k.aead, ref.ID, buf[:0])
			if err == nil {
				plain, err = wire.Decompress(plain[:0], loc.Flags, buf, loc.PlainLen)
			}
			if err == nil && h.Sum(plain) != ref.ID {
				err = fmt.Errorf("%w: listing chunk %x does not hash to its id", store.ErrDamaged, ref.ID[:8])
			}
			if err != nil {
				pw.CloseWithError(&storeReadError{id: ref.ID, err: err})
				return
			}
			if _, err := pw.Write(plain); err != nil {
				return
			}
		}
		pw.Close()
	}()
	return pr
}

func (v *Vault) versions(w http.ResponseWriter, r *http.Request, c *caller) error {
	config := r.PathValue("config")
	if config == "*" {
		config = ""
	}
	ms, err := v.Catalog.Versions(c.ID, config)
	if err != nil {
		return err
	}
	if ms == nil {
		ms = []wire.Manifest{}
	}
	writeJSON(w, wire.Versions{Versions: ms})
	return nil
}

func (v *Vault) getChunks(w http.ResponseWriter, r *http.Request, c *caller) error {
	release, err := v.downloads.acquire(r.Context(), c.Company, c.ID) // fair slots (limits.go)
	if err != nil {
		return err
	}
	defer release()
	body, err := readBody(r, wire.MaxGetIDs*32)
	if err != nil {
		return err
	}
	ids, err := wire.ParseIDs(body, wire.MaxGetIDs)
	if err != nil {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	w.Header().Set("Content-Type", wire.MediaFrames)
	var buf []byte
	for _, id := range ids {
		var loc store.Location
		buf, loc, err = v.Store.Get(c.Company, c.keys.aead, id, buf[:0])
		f := wire.Frame{ID: id, Kind: wire.StatusOK, Flags: loc.Flags, PlainLen: loc.PlainLen, Payload: buf}
		switch {
		case errors.Is(err, store.ErrNotFound):
			f = wire.Frame{ID: id, Kind: wire.StatusMissing, Payload: []byte("the vault has no such chunk")}
		case err != nil:
			ri := info(r)
			v.log.Error("damaged chunk requested", zap.String("request_id", ri.id), zap.String("principal", ri.principal),
				zap.String("company", c.Company), zap.String("id", hex.EncodeToString(id[:])), zap.Error(err))
			f = wire.Frame{ID: id, Kind: wire.StatusDamaged,
				Payload: fmt.Appendf(nil, "the vault cannot read this chunk (request id %s); the vault's log has the details", ri.id)}
		}
		// Header and payload are written from where they are: a download
		// holds one chunk, not a copy of it as a frame.
		hdr := wire.FrameHeader(&f)
		if _, err := w.Write(hdr[:]); err != nil {
			return nil // client went away (or stopped reading: deadline.go)
		}
		if _, err := w.Write(f.Payload); err != nil {
			return nil
		}
	}
	return nil
}

func (v *Vault) putSettings(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req wire.Settings
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Bandwidth != "" {
		if _, err := bandwidth.ParseProfile(req.Bandwidth); err != nil {
			return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
		}
	}
	cp, err := v.Catalog.UpdateComputer(c.ID, func(cp *catalog.Computer) error {
		cp.Settings.Bandwidth = req.Bandwidth
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, cp.Settings)
	return nil
}

func (v *Vault) report(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req wire.Report
	if err := readJSON(r, &req); err != nil {
		return err
	}
	req.Time = v.clk.Now() // the vault's clock says when it last heard from the agent
	if err := v.Catalog.PutReport(c.ID, req); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (v *Vault) journal(w http.ResponseWriter, r *http.Request, c *caller) error {
	s, err := v.session(r, c)
	if err != nil {
		return err
	}
	release, err := v.uploads.acquire(r.Context(), c.Company, c.ID) // fair slots (limits.go)
	if err != nil {
		return err
	}
	defer release()
	var req wire.JournalCommit
	if err := readJSON(r, &req); err != nil {
		return err
	}
	base, err := v.Catalog.LastSeq(c.ID, s.config)
	if err != nil {
		return err
	}
	if base == 0 {
		return fail(http.StatusConflict, wire.CodeBadRequest, "configuration %q has no version yet: commit a full synchronization before journal records", s.config)
	}
	totals, err := v.checkListing(r, s.company, c.keys, req.Listing)
	if err != nil {
		return err
	}
	t := req.Time
	if t.IsZero() || t.After(v.clk.Now()) {
		t = v.clk.Now()
	}
	j, err := v.Catalog.AddJournal(c.ID, s.config, wire.Journal{Base: base, Time: t.UTC(), Listing: req.Listing, Totals: totals})
	if err != nil {
		return err
	}
	writeJSON(w, j)
	return nil
}

func (v *Vault) listJournal(w http.ResponseWriter, r *http.Request, c *caller) error {
	config := r.PathValue("config")
	base, err := v.Catalog.LastSeq(c.ID, config)
	if err != nil {
		return err
	}
	if b := r.URL.Query().Get("base"); b != "" {
		if base, err = strconv.ParseUint(b, 10, 64); err != nil {
			return fail(http.StatusBadRequest, wire.CodeBadRequest, "base %q is not a version number", b)
		}
	}
	js, err := v.Catalog.Journal(c.ID, config, base)
	if err != nil {
		return err
	}
	if js == nil {
		js = []wire.Journal{}
	}
	writeJSON(w, js)
	return nil
}
