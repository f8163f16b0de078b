// Package vault is the vault service: it ties the chunk store, the catalog
// and the certificate authority together and serves the agent API over
// mutual TLS and the administration API on a Unix socket. Requests pass one
// authorization table (authz.go) and call operations (ops_*.go) that hold
// every rule; DESIGN.md says why.
package vault

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/mail"
	"vaultnode/appliance/pki"
	"vaultnode/appliance/store"
	"vaultnode/appliance/tape"
	"vaultnode/internal/atomicfile"
	"vaultnode/internal/clock"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
)

// MarkerFile is written at the top of a vault's data directory; an agent on
// the same host never backs up a directory that holds it.
const MarkerFile = ".vaultnode-vault"

// Options configure a vault.
type Options struct {
	Dir        string // data directory
	Listen     string // agent API address
	Log        *zap.Logger
	Clock      clock.Clock
	SessionTTL time.Duration // idle time after which an open session is forgotten
	Limits     Limits        // fairness and memory limits (limits.go); zero fields take their defaults
	// Zone is the time zone of retention's calendar buckets and of the
	// job schedules; nil: time.Local (docs/retention.md).
	Zone *time.Location
	// Portal is the portal's HTTPS address (issue 12; docs/api.md); empty:
	// no portal. PortalOptional serves without the portal, with a warning,
	// when its address is taken (vaultd's default address).
	Portal         string
	PortalOptional bool
	// PortalCert and PortalKey are PEM files of the portal's certificate
	// and key; empty: the vault's own server certificate.
	PortalCert, PortalKey string
	// PortalURL is the portal's address as people reach it
	// ("https://backup.example.com"), the base of the links the vault
	// mails; empty: https:// and the portal listener's address.
	PortalURL string

	// Tape is the tape library found at start (nil: none; docs/tape.md);
	// TapeRecovery the static recovery program written in every label
	// file; TapeFileLimit the size of a tape data file (default 4 GiB).
	Tape          *tape.Library
	TapeRecovery  []byte
	TapeFileLimit int64

	onScheduled func(jobs.Record) // tests: told of each job the schedule starts
	// OfflineMail is how long a computer is out of contact before its
	// offline mail goes (default DefaultOfflineMail).
	OfflineMail time.Duration
	// RepackThreshold is the dead share past which garbage collection
	// rewrites a pack (default DefaultRepackThreshold).
	RepackThreshold float64
	// CollectDuty is the share of the time garbage collection works while
	// a backup session is open (default DefaultCollectDuty).
	CollectDuty float64
	// StorageState is the firmware's storage report file
	// (internal/storagehealth); empty: not on an appliance, no report.
	StorageState string
	// Pair makes the vault a member of a pair (pair.go); nil: a single
	// vault, as before (no raft: the catalog applies at once).
	Pair *PairOptions
	// DirectReads reads the packs of a download that the page cache lacks
	// with O_DIRECT, in spans read ahead (store.Options.DirectReads;
	// vaultd -direct-reads; docs/performance.md, item 38).
	DirectReads bool
}

// Vault is a running vault.
type Vault struct {
	opts    Options
	log     *zap.Logger
	clk     clock.Clock
	master  cipher.AEAD
	Store   *store.Store
	Catalog *catalog.Catalog
	CA      *pki.Authority

	examined examined // testing.go
	knownMu  sync.Mutex
	known    knownListings // listing chunks a commit checked, per configuration (known.go)
	kmu      sync.Mutex
	keys     map[string]*companyKeys

	listingsMarked atomic.Int64 // listings walked by marks (collections, sweep checks)

	smu      sync.Mutex
	sessions map[string]*session
	closing  bool              // Close began: no session reads ahead any more (warm.go); smu
	warmWG   sync.WaitGroup    // sessions' listing read-aheads (warm.go)
	retired  map[string]*idSet // per company: protect sets of sessions ended during a collection (gc.go)

	gcMu       sync.RWMutex // shared: a session protecting ids and asking Has; exclusive: a sweep batch (gc.go)
	collecting sync.Mutex   // held by the running collection
	recordMu   sync.RWMutex // shared: a commit writing its catalog record (holdOpen); exclusive: a collection's start (gc.go)

	limits     Limits
	uploads    *slotPool // upload, commit and journal requests (limits.go)
	downloads  *slotPool
	readAhead  *semaphore.Weighted // bytes of chunks read ahead by downloads (GetChunks)
	raMu       sync.Mutex
	raCompany  map[string]*semaphore.Weighted // per company: at most half of readAhead
	chunkBufs  [chunkBufClasses]sync.Pool     // *[]byte: downloads' buffers by size class (GetChunks)
	conns      *connCaps
	enrollRate *enrollLimiter
	logins     loginLimiter  // portal sign-ins per client address (ops_users.go)
	browsing   chan struct{} // listings the portal reads at once (ops_browse.go)
	signins    loginGuard    // failed sign-ins and locks per (user name, address)
	resetMails loginLimiter  // reset links mailed per user (ops_reset.go)
	portalAddr string        // the portal's address once serving
	agentAddr  string        // the agent API's address once serving (the install command names its port)

	// storage is the firmware's storage report (storage.go).
	storage *storageWatch

	// Jobs runs verify, prune and garbage collection in the background
	// (ops_lifecycle.go, jobsched.go); a kind is registered with one call,
	// Jobs.Register. Metrics holds their series, served on the admin
	// socket at /metrics.
	pair *pairMember // nil: a single vault (pair.go)

	Jobs      *jobs.Runner
	Metrics   *prometheus.Registry
	schedPoke chan struct{}

	cmds *cmdQueue // the agents' command channel (ops_commands.go)
	// Tape is the tape subsystem (tape.go); without a library its
	// operations answer that there is none.
	Tape    *tape.Service
	tapeReq tapeRestores
	// Mail is the outbound mail queue (DATA/mail); notes decides what it
	// carries (notify.go).
	Mail  *mail.Queue
	notes *notifier
}

type companyKeys struct {
	set  keys.Set
	aead *pack.Sealer
}

// Open opens (or creates) the vault in opts.Dir.
func Open(opts Options) (*Vault, error) {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.SessionTTL == 0 {
		opts.SessionTTL = time.Hour
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(opts.Dir, MarkerFile), []byte("vaultnode vault data: agents on this host skip this directory\n"), 0o644); err != nil {
		return nil, fmt.Errorf("write marker: %w", err)
	}
	mk, err := loadMasterKey(filepath.Join(opts.Dir, "master.key"))
	if err != nil {
		return nil, err
	}
	v := &Vault{opts: opts, log: opts.Log, clk: opts.Clock, master: pack.NewAEAD(mk),
		keys: map[string]*companyKeys{}, sessions: map[string]*session{}, cmds: newCmdQueue(), browsing: make(chan struct{}, maxBrowsing),
		storage: &storageWatch{path: opts.StorageState}}
	v.initLimits(opts.Limits)
	v.resetMails.rate, v.resetMails.period = ResetMailsPerUser, ResetMailWindow
	if v.CA, err = pki.LoadOrCreate(filepath.Join(opts.Dir, "tls"), opts.Clock.Now()); err != nil {
		return nil, err
	}
	if err := checkCatalogThere(opts.Dir); err != nil {
		return nil, err
	}
	copts := catalog.Options{Log: opts.Log.Named("catalog"), Clock: opts.Clock}
	if opts.Pair != nil {
		v.pair = &pairMember{}
		v.pair.gc.storeReady, v.pair.gc.quit = make(chan struct{}), make(chan struct{})
		v.pair.gc.crashAfter = opts.Pair.TestCrashSweep
		copts.Submit = v.pair.submit
	}
	if v.Catalog, err = catalog.Open(opts.Dir, copts); err != nil {
		return nil, err
	}
	if opts.Pair != nil {
		// A copy to another member waits for it to apply every sweep
		// this member may have applied before it started (pairgc.go).
		if idx, err := v.Catalog.AppliedIndex(); err == nil {
			v.pair.gc.sweepIndex.Store(idx)
		}
		if err := v.startPair(); err != nil {
			v.pair.close()
			v.Catalog.Close()
			return nil, err
		}
	}
	sopts := v.storeOptions()
	if v.pair != nil {
		sopts.Replicate = v.pair.rep.Replicate
		sopts.Replica = v.pair.rep.Replica
	}
	if v.Store, err = store.Open(opts.Dir, opts.Log.Named("store"), sopts); err != nil {
		if v.pair != nil {
			v.pair.close()
		}
		v.Catalog.Close()
		return nil, err
	}
	if v.Mail, err = mail.Open(filepath.Join(opts.Dir, "mail"), opts.Clock, opts.Log.Named("mail")); err != nil {
		v.Store.Close()
		if v.pair != nil {
			v.pair.close()
		}
		v.Catalog.Close()
		return nil, err
	}
	v.Mail.SetUnseal(v.openPassword)
	if err := v.sealMailFile(); err != nil {
		v.log.Warn("seal the SMTP password of the mail settings", zap.Error(err))
	}
	v.notes = newNotifier(filepath.Join(opts.Dir, "mail"))
	if v.pair != nil {
		// Only the leader tells and sends; what it did goes through the
		// log (pairmail.go).
		v.Mail.SetThrough(v.mailThrough)
		v.notes.loadFn, v.notes.saveFn = v.loadNotifyState, v.saveNotifyState
	}
	if v.pair != nil {
		v.pair.rep.SetStore(v.Store)
		// A snapshot's install a crash interrupted (pairsnap.go).
		if err := v.finishRestore(); err != nil {
			v.log.Warn("finish a catalog snapshot's install at start: tried again at the next install or start", zap.Error(err))
		}
		close(v.pair.gc.storeReady)
	}
	v.Metrics = prometheus.NewRegistry()
	v.conns.register(v.Metrics, "agent_api")
	v.Jobs = jobs.New(opts.Clock, v.Catalog, opts.Log.Named("jobs"), v.Metrics)
	v.schedPoke = make(chan struct{}, 1)
	if err := v.checkIndex(func() error { _, err := v.Store.Rebuild(context.Background(), nil); return err }); err != nil {
		v.Close()
		return nil, err
	}
	v.Jobs.Register(jobs.KindVerify, v.verifyJob)
	v.Jobs.Register(jobs.KindPrune, v.pruneJob)
	v.Jobs.Register(jobs.KindCollect, v.CollectJob)
	v.openTape()
	if v.pair != nil {
		// Job records change through the log: the leader recovers them
		// when it takes over (runPair).
		v.Jobs.Register(KindCatchUp, v.catchUpJob)
		v.registerPairMetrics()
	} else if _, err := v.Jobs.Recover(); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

// Close stops the jobs (a running one is recorded as interrupted), then
// closes the store and catalog.
func (v *Vault) Close() error {
	v.Jobs.Close()
	v.stopWarms()
	var perr error
	if v.pair != nil {
		perr = v.pair.close()
	}
	return errors.Join(perr, v.Store.Close(), v.Catalog.Close())
}

func loadMasterKey(path string) ([32]byte, error) {
	var k [32]byte
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, err := rand.Read(k[:]); err != nil {
			return k, err
		}
		// Synced file and directory: the key's name and content survive a power cut.
		if err := atomicfile.WriteFile(path, k[:], 0o600); err != nil {
			return k, fmt.Errorf("write master key: %w", err)
		}
		return k, nil
	}
	if err != nil {
		return k, fmt.Errorf("read master key: %w", err)
	}
	if len(b) != 32 {
		return k, fmt.Errorf("master key %s is %d bytes, want 32: restore it from your key backup", path, len(b))
	}
	copy(k[:], b)
	return k, nil
}

// NewCompany creates a company with a fresh secret.
func (v *Vault) NewCompany(name string) error {
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return err
	}
	nonce := make([]byte, v.master.NonceSize())
	rand.Read(nonce)
	sealed := v.master.Seal(nonce, nonce, secret[:], []byte("company "+name))
	return v.Catalog.CreateCompany(catalog.Company{Name: name, Sealed: sealed, Created: v.clk.Now()})
}

func (v *Vault) companyKeys(name string) (*companyKeys, error) {
	v.kmu.Lock()
	defer v.kmu.Unlock()
	if k := v.keys[name]; k != nil {
		return k, nil
	}
	co, err := v.Catalog.Company(name)
	if err != nil {
		return nil, err
	}
	secret, err := v.unseal(co)
	if err != nil {
		return nil, err
	}
	k := &companyKeys{set: keys.Derive(secret)}
	k.aead = pack.NewSealer(k.set.Pack)
	v.keys[name] = k
	return k, nil
}

// unseal opens a company's secret with the master key.
func (v *Vault) unseal(co catalog.Company) ([32]byte, error) {
	ns := v.master.NonceSize()
	if len(co.Sealed) < ns {
		return [32]byte{}, fmt.Errorf("company %q: sealed secret is truncated", co.Name)
	}
	secret, err := v.master.Open(nil, co.Sealed[:ns], co.Sealed[ns:], []byte("company "+co.Name))
	if err != nil || len(secret) != 32 {
		return [32]byte{}, fmt.Errorf("company %q: cannot unseal its secret with this vault's master key (wrong master.key?)", co.Name)
	}
	return [32]byte(secret), nil
}

// companySecret returns a company's secret (vaultctl company export-key).
func (v *Vault) companySecret(name string) ([32]byte, error) {
	co, err := v.Catalog.Company(name)
	if err != nil {
		return [32]byte{}, err
	}
	return v.unseal(co)
}

// listenPortal opens the portal's listener and its server (nil, nil when
// there is none).
func (v *Vault) listenPortal(errLog *log.Logger) (*http.Server, net.Listener, error) {
	if v.opts.Portal == "" {
		return nil, nil, nil
	}
	cert := v.CA.Server
	if v.opts.PortalCert != "" {
		c, err := tls.LoadX509KeyPair(v.opts.PortalCert, v.opts.PortalKey)
		if err != nil {
			return nil, nil, fmt.Errorf("load the portal's certificate: %w", err)
		}
		cert = c
	}
	pln, err := net.Listen("tcp", v.opts.Portal)
	if err != nil {
		if v.opts.PortalOptional {
			v.log.Warn("portal not served: its address is taken; choose another with -portal", zap.String("portal", v.opts.Portal), zap.Error(err))
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("listen on %s (portal): %w", v.opts.Portal, err)
	}
	v.portalAddr = pln.Addr().String()
	// Per-address and total connection caps: portal connections never
	// carry a client certificate, so they all count as unauthenticated.
	pln = newConnCaps(&Limits{UnauthPerAddr: v.limits.PortalPerAddr, UnauthTotal: v.limits.PortalTotal}, v.log.Named("portal")).listener(pln)
	srv := &http.Server{Handler: v.portalHandler(), ErrorLog: errLog, ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: time.Minute, WriteTimeout: time.Minute, IdleTimeout: 5 * time.Minute, MaxHeaderBytes: 64 << 10,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}}
	return srv, pln, nil
}

// PortalAddr is the portal's address once Serve has called ready ("" when
// it serves none).
func (v *Vault) PortalAddr() string { return v.portalAddr }

// Serve runs the agent API and the admin socket until ctx is done.
func (v *Vault) Serve(ctx context.Context, ready func(agentAddr string)) error {
	ctx, stopRuns := context.WithCancel(ctx)
	defer stopRuns()
	ln, err := net.Listen("tcp", v.opts.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", v.opts.Listen, err)
	}
	sock := filepath.Join(v.opts.Dir, "admin.sock")
	os.Remove(sock)
	aln, err := net.Listen("unix", sock)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	os.Chmod(sock, 0o600)
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{v.CA.Server},
		ClientCAs:    v.CA.Pool(),
		ClientAuth:   tls.VerifyClientCertIfGiven,
		NextProtos:   []string{"h2", "http/1.1"},
	}
	ln, tlsConf = v.conns.listener(ln), v.conns.tlsConfig(tlsConf) // connection caps (conn.go)
	errLog, _ := zap.NewStdLogAt(v.log.Named("http"), zap.WarnLevel)
	agentSrv := &http.Server{Handler: v.agentHandler(), TLSConfig: tlsConf, ErrorLog: errLog,
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: maxStreams,
			MaxReceiveBufferPerConnection: connRecvWindow, MaxReceiveBufferPerStream: streamRecvWindow, MaxReadFrameSize: readFrameSize}}
	adminSrv := &http.Server{Handler: v.adminHandler(), ErrorLog: errLog, ReadHeaderTimeout: 30 * time.Second}
	portalSrv, pln, err := v.listenPortal(errLog)
	if err != nil {
		ln.Close()
		aln.Close()
		return err
	}
	errc := make(chan error, 3)
	// Reads buffered under TLS (internal/bufconn): an upload arrives as
	// 16 KiB records, and one read of many costs one system call, not one
	// each. What ServeTLS does, with the buffer between.
	go func() { errc <- agentSrv.Serve(tls.NewListener(bufListener{ln, &v.conns.read}, tlsConf)) }()
	go func() { errc <- adminSrv.Serve(aln) }()
	if portalSrv != nil {
		go func() { errc <- portalSrv.ServeTLS(pln, "", "") }()
	}
	go v.expireSessions(ctx)
	if v.pair != nil {
		pairDone := make(chan struct{})
		go func() { defer close(pairDone); v.runPair(ctx) }()
		defer func() { <-pairDone }()
	}
	schedDone := make(chan struct{})
	go func() { defer close(schedDone); v.runSchedule(ctx) }()
	defer func() { <-schedDone }()
	v.agentAddr = ln.Addr().String()
	mailDone := make(chan struct{}, 2)
	go func() { defer func() { mailDone <- struct{}{} }(); v.runMail(ctx) }()
	go func() { defer func() { mailDone <- struct{}{} }(); v.runNotify(ctx) }()
	defer func() { <-mailDone; <-mailDone }()
	v.log.Info("vault serving", zap.String("agent_api", ln.Addr().String()), zap.String("admin", sock))
	if ready != nil {
		ready(ln.Addr().String())
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		// A server that stops stops the vault, and says why: the pair,
		// the schedule and the mail run on ctx, and waiting for them
		// without ending them would leave a vault that serves nothing
		// and never exits.
		v.log.Error("a listener failed; the vault stops", zap.Error(err))
		stopRuns()
		agentSrv.Close()
		adminSrv.Close()
		if portalSrv != nil {
			portalSrv.Close()
		}
		return err
	}
	v.cmds.shutdown() // waiting polls answer now, so Shutdown need not wait them out
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = errors.Join(agentSrv.Shutdown(sctx), adminSrv.Shutdown(sctx))
	if portalSrv != nil {
		err = errors.Join(err, portalSrv.Shutdown(sctx))
	}
	os.Remove(sock)
	return err
}
