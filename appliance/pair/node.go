// Package pair makes two vault appliances (and a witness) one vault: the
// catalog goes through a raft log (hashicorp/raft), chunks are copied to
// the other data member outside raft, and only the leader takes writes.
// DESIGN.md says why it is built this way.
package pair

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
)

// Errors of the pair.
var (
	// ErrNoLeader: no member is leader now (an election is running, or
	// too few members are up to hold one).
	ErrNoLeader = errors.New("the pair has no leader now")
	ErrInvalid  = errors.New("invalid")
)

var memberIDRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,31}$`)

func validMemberID(id string) error {
	if !memberIDRE.MatchString(id) {
		return fmt.Errorf("%w member id %q: use 1 to 32 of a-z 0-9 . _ - starting with a letter or digit", ErrInvalid, id)
	}
	return nil
}

// Config configures a member.
type Config struct {
	ID   string // member id, unique in the pair
	Dir  string // DATA/pair: raft-wal (the log) and snapshots
	Bind string // pair address to listen on
	// Advertise is the pair address the others reach (default Bind's
	// address once listening).
	Advertise string
	Agent     string // this member's agent API address (redirects); empty on a witness
	TLS       *tls.Config
	// Catalog is what the log applies to; nil on a witness.
	Catalog *catalog.Catalog
	Log     *zap.Logger
	// Handler serves the HTTP side of the pair address (replication,
	// join); may be set later with SetHandler.
	Handler http.Handler
	// Timing: zero takes the defaults (a loopback or a LAN).
	HeartbeatTimeout time.Duration // default 1 s
	ApplyTimeout     time.Duration // default 10 s
	// SnapshotThreshold is the number of log entries after which a
	// snapshot is taken and the log compacted (default 8192).
	SnapshotThreshold uint64
	// BeforeApply, when set, sees each command of the log before the
	// catalog applies it, on the FSM's goroutine (a replayed entry the
	// catalog already applied too: check Catalog.AppliedIndex). The
	// vault deletes a garbage collection's sweep from its store there, so
	// that a crash before the catalog records the entry replays the
	// deletion rather than forgetting it.
	BeforeApply func(index uint64, cmd catalog.Command)
	// Restoring, when set, is told the catalog's applied index before a
	// snapshot from the leader replaces the catalog, and Restored after,
	// both on the FSM's goroutine: the vault brings its store and mail
	// queue to what the entries inside the snapshot did. An error from
	// either fails the install: raft sends the snapshot again, and this
	// member's applied index (WaitApplied, copies waiting for a sweep)
	// does not move meanwhile. A snapshot of the state the catalog holds
	// already (its applied index is the snapshot's: the leader sends a
	// snapshot again when the answer to an install was lost) does not
	// replace the catalog: Restoring is not told, Restored is (it finishes
	// an earlier install left unfinished).
	Restoring func(prev uint64) error
	Restored  func(prev uint64) error
}

// Node is a running member.
type Node struct {
	cfg   Config
	log   *zap.Logger
	raft  *raft.Raft
	logs  *LogStore
	mux   *mux
	trans *raft.NetworkTransport
	http  *http.Server
	hmu   sync.RWMutex
	h     http.Handler

	appliedMu sync.Mutex
	applied   uint64
	appliedC  chan struct{} // closed and replaced at each applied index

	client *http.Client
	copies *copyPool // connections of copies to the other members

	// copyHandler serves the copy streams from the leader (SetCopyHandler);
	// copyConns are those open, closed by Close.
	copyHandler atomic.Pointer[func(net.Conn)]
	copyMu      sync.Mutex
	copyConns   map[net.Conn]bool
	copyWG      sync.WaitGroup

	stop, stopped chan struct{} // the witness's handOver loop

	storeBytes atomic.Pointer[func() int64]

	// lastLeader is the last other member this one followed; deposed,
	// while this member leads, is the member that led before it (it
	// stopped answering, or its leadership was handed over).
	leaderMu   sync.Mutex
	lastLeader string
	deposed    string
}

// observeLeader keeps lastLeader and deposed. It is raft's observer
// filter, called in raft's own goroutine as the leader changes; it sends
// nothing on, so no goroutine of ours reads observations.
func (n *Node) observeLeader(o *raft.Observation) bool {
	lo, ok := o.Data.(raft.LeaderObservation)
	if !ok {
		return false
	}
	n.leaderMu.Lock()
	defer n.leaderMu.Unlock()
	switch id := string(lo.LeaderID); id {
	case "":
	case n.cfg.ID:
		n.deposed = n.lastLeader
	default:
		n.lastLeader, n.deposed = id, ""
	}
	return false
}

// answered notes that member took a copy: it is back, no longer treated
// as the deposed leader.
func (n *Node) answered(member string) {
	n.leaderMu.Lock()
	defer n.leaderMu.Unlock()
	if n.deposed == member {
		n.deposed = ""
	}
}

// Deposed is, while this member leads, the member that led before it
// and has not taken a copy since; empty if none or if this member does
// not lead.
func (n *Node) Deposed() string {
	if !n.IsLeader() {
		return ""
	}
	n.leaderMu.Lock()
	defer n.leaderMu.Unlock()
	return n.deposed
}

// handOver runs on a witness: whenever it leads, it hands leadership to a
// data member, since only a data member can serve.
func (n *Node) handOver() {
	defer close(n.stopped)
	tick := time.NewTicker(n.cfg.HeartbeatTimeout / 2)
	defer tick.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-n.raft.LeaderCh():
		case <-tick.C:
		}
		if n.raft.State() != raft.Leader {
			continue
		}
		cf := n.raft.GetConfiguration()
		if cf.Error() != nil {
			continue
		}
		for _, srv := range cf.Configuration().Servers {
			if srv.ID == raft.ServerID(n.cfg.ID) || srv.Suffrage != raft.Voter {
				continue
			}
			// Only to a member that answers: a transfer to a dead one
			// holds the log still until it times out.
			ctx, cancel := context.WithTimeout(context.Background(), n.cfg.HeartbeatTimeout)
			_, err := n.PeerStatus(ctx, string(srv.Address))
			cancel()
			if err != nil {
				continue
			}
			err = n.raft.LeadershipTransferToServer(srv.ID, srv.Address).Error()
			if err == nil {
				n.log.Info("witness handed leadership to a data member", zap.String("member", string(srv.ID)))
				break
			}
			n.log.Debug("hand leadership over", zap.String("member", string(srv.ID)), zap.Error(err))
		}
	}
}

// HandOverTo hands this leader's leadership to data member m if it
// answers over the pair address: a leader recorded behind does so when a
// whole member is up, which then copies to it what it lacks (no member
// copies to the leader).
func (n *Node) HandOverTo(ctx context.Context, m Member) error {
	if !n.IsLeader() {
		return n.notLeader()
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.HeartbeatTimeout)
	st, err := n.PeerStatus(ctx, m.Raft)
	cancel()
	if err != nil {
		return fmt.Errorf("hand leadership to %s: %w", m.ID, err)
	}
	if st.ID != m.ID {
		return fmt.Errorf("hand leadership to %s: %s answers there", m.ID, st.ID)
	}
	if err := n.raft.LeadershipTransferToServer(raft.ServerID(m.ID), raft.ServerAddress(m.Raft)).Error(); err != nil {
		return fmt.Errorf("hand leadership to %s: %w", m.ID, err)
	}
	return nil
}

// Start opens the log, listens on cfg.Bind and starts raft. A member with
// no raft state waits to be bootstrapped (Bootstrap) or added by a leader.
func Start(cfg Config) (*Node, error) {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if err := validMemberID(cfg.ID); err != nil {
		return nil, err
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = time.Second
	}
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = 10 * time.Second
	}
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = 8192
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start pair member: %w", err)
	}
	n := &Node{cfg: cfg, log: cfg.Log, h: cfg.Handler, appliedC: make(chan struct{}), client: memberClient(cfg.TLS),
		copies: newCopyPool(cfg.TLS), copyConns: map[net.Conn]bool{}}
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: zapWriter{n.log.Named("raft")}})
	var err error
	if n.logs, err = OpenLogStore(cfg.Dir, hl); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Bind)
	if err != nil {
		n.logs.Close()
		return nil, fmt.Errorf("listen on %s (pair): %w", cfg.Bind, err)
	}
	adv := cfg.Advertise
	if adv == "" {
		adv = ln.Addr().String()
	}
	advAddr, err := net.ResolveTCPAddr("tcp", adv)
	if err != nil {
		ln.Close()
		n.logs.Close()
		return nil, fmt.Errorf("pair address %s: %w", adv, err)
	}
	n.cfg.Advertise = adv
	n.mux = newMux(ln, cfg.TLS, n.log)
	n.trans = raft.NewNetworkTransportWithLogger(&streamLayer{chanListener: chanListener{m: n.mux, ch: n.mux.raft}, conf: cfg.TLS, advertise: advAddr},
		3, 10*time.Second, hl)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hl)
	if err != nil {
		n.closeTransport()
		return nil, fmt.Errorf("start pair member: %w", err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hl
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.HeartbeatTimeout
	if cfg.Catalog == nil {
		// A witness holds no data. It notices a dead leader as soon as
		// a data member does: a voter that still knows a leader refuses
		// every vote, so a later witness would hold the election off
		// (measured: 2 s of a 3 s failover with three heartbeats).
		// After a split vote it waits longer before it runs again, so
		// the data member's next try wins; and it hands leadership over
		// when it wins anyway (handOver).
		rc.ElectionTimeout *= 3
	}
	rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout
	rc.CommitTimeout = 20 * time.Millisecond
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.SnapshotThreshold
	// The catalog is durable and records the last index it applied
	// (catalog.ApplyLog): a restart replays only what it lacks, without
	// first rolling the catalog back to the last snapshot.
	rc.NoSnapshotRestoreOnStart = true
	f := &fsm{cat: cfg.Catalog, applied: n.setApplied, before: cfg.BeforeApply, restoring: cfg.Restoring, restored: cfg.Restored}
	if cfg.Catalog != nil {
		if idx, err := cfg.Catalog.AppliedIndex(); err == nil {
			n.applied = idx
		}
	}
	n.raft, err = raft.NewRaft(rc, f, n.logs, n.logs, metaSnapshots{snaps}, n.trans)
	if err != nil {
		n.closeTransport()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.raft.RegisterObserver(raft.NewObserver(nil, false, n.observeLeader))
	if n.h == nil {
		n.h = n.StatusHandler()
	}
	n.http = &http.Server{Handler: http.HandlerFunc(n.serveHTTP), ReadHeaderTimeout: 10 * time.Second,
		// Copies stream in while the leader writes: windows of a few
		// MiB let it send on without waiting for each update.
		HTTP2: &http.HTTP2Config{MaxReceiveBufferPerConnection: 32 << 20, MaxReceiveBufferPerStream: 16 << 20, MaxReadFrameSize: 1 << 20}}
	go n.http.Serve(chanListener{m: n.mux, ch: n.mux.http})
	n.copyWG.Add(1)
	go n.serveCopies() // owner: the node (Close closes the mux and waits)
	if cfg.Catalog == nil {
		n.stop, n.stopped = make(chan struct{}), make(chan struct{})
		go n.handOver()
	}
	return n, nil
}

func (n *Node) closeTransport() {
	if n.trans != nil {
		n.trans.Close()
	}
	n.mux.close()
	n.logs.Close()
}

// SetHandler sets what the HTTP side of the pair address serves.
func (n *Node) SetHandler(h http.Handler) {
	n.hmu.Lock()
	n.h = h
	n.hmu.Unlock()
}

func (n *Node) serveHTTP(w http.ResponseWriter, r *http.Request) {
	n.hmu.RLock()
	h := n.h
	n.hmu.RUnlock()
	if h == nil {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	h.ServeHTTP(w, r)
}

// SetCopyHandler sets what serves the copy streams from the leader (the
// replicator of a data member; a witness takes none).
func (n *Node) SetCopyHandler(h func(net.Conn)) { n.copyHandler.Store(&h) }

// serveCopies hands each copy stream to the copy handler, until the mux
// closes.
func (n *Node) serveCopies() {
	defer n.copyWG.Done()
	l := chanListener{m: n.mux, ch: n.mux.copy}
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		h := n.copyHandler.Load()
		n.copyMu.Lock()
		closed := n.copyConns == nil
		if h != nil && !closed {
			n.copyConns[c] = true
		}
		n.copyMu.Unlock()
		if h == nil || closed {
			c.Close()
			continue
		}
		n.copyWG.Add(1)
		go func() {
			defer n.copyWG.Done()
			(*h)(c)
			n.copyMu.Lock()
			delete(n.copyConns, c)
			n.copyMu.Unlock()
		}()
	}
}

// closeCopies ends every copy stream and waits for their handlers.
func (n *Node) closeCopies() {
	n.copyMu.Lock()
	for c := range n.copyConns {
		c.Close()
	}
	n.copyConns = nil
	n.copyMu.Unlock()
	n.copyWG.Wait()
	n.copies.close()
}

// Client is an HTTP client to the other members' pair addresses.
func (n *Node) Client() *http.Client { return n.client }

// Close stops raft and the listener. The log and catalog stay as they are.
func (n *Node) Close() error {
	if n.stop != nil {
		close(n.stop)
		<-n.stopped
	}
	err := n.raft.Shutdown().Error()
	n.mux.close() // the HTTP side's listener ends with it
	n.http.Close()
	n.closeCopies()
	n.closeTransport()
	return err
}

// ID is this member's id; Addr its pair address.
func (n *Node) ID() string   { return n.cfg.ID }
func (n *Node) Addr() string { return n.cfg.Advertise }

// HasState reports whether this member has joined or formed a pair
// before (raft state on disk).
func (n *Node) HasState() (bool, error) {
	return raft.HasExistingState(n.logs, n.logs, noSnapshots{})
}

type noSnapshots struct{ raft.SnapshotStore }

func (noSnapshots) List() ([]*raft.SnapshotMeta, error) { return nil, nil }

// Bootstrap forms a pair of this member alone (it becomes leader at once),
// and records it; it does nothing on a member that has raft state.
func (n *Node) Bootstrap(ctx context.Context) error {
	has, err := n.HasState()
	if err != nil || has {
		return err
	}
	conf := raft.Configuration{Servers: []raft.Server{{ID: raft.ServerID(n.cfg.ID), Address: raft.ServerAddress(n.cfg.Advertise)}}}
	if err := n.raft.BootstrapCluster(conf).Error(); err != nil {
		return fmt.Errorf("form the pair: %w", err)
	}
	if err := n.WaitLeader(ctx); err != nil {
		return err
	}
	return n.record(Member{ID: n.cfg.ID, Raft: n.cfg.Advertise, Agent: n.cfg.Agent, Witness: n.cfg.Catalog == nil})
}

func (n *Node) record(m Member) error {
	cmd, err := catalog.NewCommand(KindMember, m)
	if err != nil {
		return err
	}
	_, err = n.Submit(cmd)
	return err
}

// WaitLeader waits until this member is the leader and has applied every
// entry of earlier terms, or ctx ends.
func (n *Node) WaitLeader(ctx context.Context) error {
	for {
		if n.raft.State() == raft.Leader {
			return n.raft.Barrier(n.cfg.ApplyTimeout).Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait to lead the pair: %w", ctx.Err())
		case <-n.raft.LeaderCh():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TransferLeadership hands leadership to the voter id (a planned stop of
// this member); on the leader only. This member is deposed at once: it
// refuses writes from then on.
func (n *Node) TransferLeadership(id string) error {
	if !n.IsLeader() {
		return n.notLeader()
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, srv := range cf.Configuration().Servers {
		if string(srv.ID) == id && srv.Suffrage == raft.Voter {
			if err := n.raft.LeadershipTransferToServer(srv.ID, srv.Address).Error(); err != nil {
				return fmt.Errorf("hand leadership to %s: %w", id, err)
			}
			return nil
		}
	}
	return fmt.Errorf("hand leadership to %s: no such voter in the pair", id)
}

// Snapshot takes a snapshot of the catalog now and compacts the log
// behind it (raft does it by itself every SnapshotThreshold entries).
func (n *Node) Snapshot() error {
	if err := n.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("snapshot the pair's log: %w", err)
	}
	return nil
}

// IsLeader reports whether this member leads now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderCh tells each change of this member's leadership.
func (n *Node) LeaderCh() <-chan bool { return n.raft.LeaderCh() }

// Leader is the member that leads now, as the catalog records it (its
// agent address included); ok is false when none is known.
func (n *Node) Leader() (m Member, ok bool) {
	addr, id := n.raft.LeaderWithID()
	if id == "" {
		return Member{}, false
	}
	m = Member{ID: string(id), Raft: string(addr)}
	if n.cfg.Catalog != nil {
		ms, _ := Members(n.cfg.Catalog)
		for _, x := range ms {
			if x.ID == m.ID {
				return x, true
			}
		}
	}
	return m, true
}

// notLeader is the error of a write on a follower.
func (n *Node) notLeader() error {
	if m, ok := n.Leader(); ok {
		if m.Agent != "" {
			return fmt.Errorf("%w; leader is %s at %s", catalog.ErrNotLeader, m.ID, m.Agent)
		}
		return fmt.Errorf("%w; leader is %s", catalog.ErrNotLeader, m.ID)
	}
	return fmt.Errorf("%w: %w", catalog.ErrNotLeader, ErrNoLeader)
}

// Submit sends a catalog command through the log and returns what
// applying it returned on this member: catalog.Options.Submit. A follower
// refuses with catalog.ErrNotLeader naming the leader.
func (n *Node) Submit(cmd catalog.Command) (any, error) {
	if n.raft == nil || n.raft.State() != raft.Leader {
		return nil, n.notLeader()
	}
	b, err := cmd.Marshal()
	if err != nil {
		return nil, err
	}
	f := n.raft.Apply(b, n.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			// Lost leadership: the command may or may not be committed;
			// the caller's retry meets the new leader.
			return nil, fmt.Errorf("%w (%v)", n.notLeader(), err)
		}
		return nil, fmt.Errorf("replicate %s command: %w", cmd.Kind, err)
	}
	r, _ := f.Response().(applyResult)
	return r.res, r.err
}

func (n *Node) setApplied(i uint64) {
	n.appliedMu.Lock()
	if i > n.applied {
		n.applied = i
	}
	close(n.appliedC)
	n.appliedC = make(chan struct{})
	n.appliedMu.Unlock()
}

// WaitApplied waits until this member applied the log up to index, or ctx
// ends.
func (n *Node) WaitApplied(ctx context.Context, index uint64) error {
	for {
		n.appliedMu.Lock()
		ok, ch := n.applied >= index, n.appliedC
		n.appliedMu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait to apply the log up to %d: %w", index, ctx.Err())
		case <-ch:
		}
	}
}

// Applied is the index of the last command applied here (raft's own
// AppliedIndex runs ahead: it counts entries handed to the FSM).
func (n *Node) Applied() uint64 {
	n.appliedMu.Lock()
	defer n.appliedMu.Unlock()
	return n.applied
}

// AddMember adds a member as a non-voter and records its addresses; on
// the leader only. A non-voter counts for no majority, so the pair goes on
// committing while the new member starts; PromoteReady makes it a voter
// once it has caught up with the log.
func (n *Node) AddMember(ctx context.Context, m Member) error {
	if err := validMemberID(m.ID); err != nil {
		return err
	}
	if !n.IsLeader() {
		return n.notLeader()
	}
	if err := n.raft.AddNonvoter(raft.ServerID(m.ID), raft.ServerAddress(m.Raft), 0, n.cfg.ApplyTimeout).Error(); err != nil {
		return fmt.Errorf("add member %s: %w", m.ID, err)
	}
	return n.record(m)
}

// PromoteReady makes voters of the non-voters whose status (asked over the
// pair address) shows they applied the log up to the leader's commit
// index when asked; on the leader only. It returns the members promoted.
func (n *Node) PromoteReady(ctx context.Context) ([]string, error) {
	if !n.IsLeader() {
		return nil, nil
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	var out []string
	for _, srv := range cf.Configuration().Servers {
		if srv.Suffrage != raft.Nonvoter {
			continue
		}
		commit := n.raft.CommitIndex()
		st, err := n.PeerStatus(ctx, string(srv.Address))
		if err != nil || st.ID != string(srv.ID) || st.LastIndex+1 < commit {
			continue
		}
		if err := n.raft.AddVoter(srv.ID, srv.Address, 0, n.cfg.ApplyTimeout).Error(); err != nil {
			return out, fmt.Errorf("make %s a voter: %w", srv.ID, err)
		}
		n.log.Info("member caught up with the log: now a voter", zap.String("member", string(srv.ID)))
		out = append(out, string(srv.ID))
	}
	return out, nil
}

// PeerStatus asks a member at its pair address for its Status.
func (n *Node) PeerStatus(ctx context.Context, addr string) (Status, error) {
	var st Status
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "https://"+addr+PathStatus, nil)
	if err != nil {
		return st, err
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status of %s: %s", addr, resp.Status)
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
	return st, err
}

// RemoveMember removes a member (a dead appliance being replaced).
func (n *Node) RemoveMember(ctx context.Context, id string) error {
	if !n.IsLeader() {
		return n.notLeader()
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.ApplyTimeout).Error(); err != nil {
		return fmt.Errorf("remove member %s: %w", id, err)
	}
	return n.record(Member{ID: id, Remove: true})
}

// Promote makes this member the only voter, for an operator who checked
// that the other data member is really gone and no witness is there to
// elect: raft's recovery, on a stopped raft. It risks a split brain if
// the other member is alive after all (docs/pair.md).
func Promote(cfg Config) error {
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: io.Discard})
	logs, err := OpenLogStore(cfg.Dir, hl)
	if err != nil {
		return err
	}
	defer logs.Close()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hl)
	if err != nil {
		return err
	}
	_, trans := raft.NewInmemTransport(raft.ServerAddress(cfg.Advertise))
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hl
	rc.NoSnapshotRestoreOnStart = true
	conf := raft.Configuration{Servers: []raft.Server{{ID: raft.ServerID(cfg.ID), Address: raft.ServerAddress(cfg.Advertise)}}}
	return raft.RecoverCluster(rc, &fsm{cat: cfg.Catalog}, logs, logs, snaps, trans, conf)
}

// Status is what `vaultctl pair status` shows.
type Status struct {
	ID        string         `json:"id"`
	State     string         `json:"state"` // Leader, Follower, Candidate, Shutdown
	Leader    string         `json:"leader,omitempty"`
	Term      uint64         `json:"term"`
	LastIndex uint64         `json:"last_index"`
	Commit    uint64         `json:"commit_index"`
	Applied   uint64         `json:"applied_index"`
	Members   []MemberStatus `json:"members"`
	Behind    []Behind       `json:"behind,omitempty"`
	// StoreBytes is the bytes of this member's packs (a data member).
	StoreBytes int64 `json:"store_bytes"`
}

// MemberStatus is one member in a Status.
type MemberStatus struct {
	Member
	Voter bool `json:"voter"`
	// LagCommands is how many log entries the member has not applied
	// (-1: unknown; the vault asks each member over the pair address).
	// LagBytes is filled by the vault: chunk bytes not yet copied.
	LagCommands int64  `json:"lag_commands"`
	LagBytes    int64  `json:"lag_bytes"`
	Contact     string `json:"last_contact,omitempty"`
}

// Status reports this member's view.
func (n *Node) Status() Status {
	st := n.raft.Stats()
	s := Status{ID: n.cfg.ID, State: n.raft.State().String(), Applied: n.Applied()}
	if f := n.storeBytes.Load(); f != nil {
		s.StoreBytes = (*f)()
	}
	if m, ok := n.Leader(); ok {
		s.Leader = m.ID
	}
	fmt.Sscan(st["term"], &s.Term)
	fmt.Sscan(st["last_log_index"], &s.LastIndex)
	fmt.Sscan(st["commit_index"], &s.Commit)
	var recorded []Member
	if n.cfg.Catalog != nil {
		recorded, _ = Members(n.cfg.Catalog)
		s.Behind, _ = BehindMembers(n.cfg.Catalog)
	}
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return s
	}
	for _, srv := range cf.Configuration().Servers {
		ms := MemberStatus{Member: Member{ID: string(srv.ID), Raft: string(srv.Address)}, Voter: srv.Suffrage == raft.Voter, LagCommands: -1}
		for _, r := range recorded {
			if r.ID == ms.ID {
				ms.Member = r
			}
		}
		if string(srv.ID) == n.cfg.ID {
			ms.LagCommands = int64(s.LastIndex) - int64(s.Applied)
		}
		s.Members = append(s.Members, ms)
	}
	return s
}

// StatusHandler serves this member's Status (every member, the witness
// too, serves it on its pair address).
func (n *Node) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(n.Status())
	})
}

// zapWriter turns hclog's lines into zap entries.
type zapWriter struct{ l *zap.Logger }

func (w zapWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(line, "[ERROR]"):
		// raft's errors are mostly an unreachable member, logged at
		// each retry: a warning, without zap's stack trace.
		w.l.Warn(line, zap.String("raft_level", "error"))
	case strings.Contains(line, "[WARN]"):
		w.l.Warn(line)
	default:
		w.l.Info(line)
	}
	return len(p), nil
}
