package vault

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
	"vaultnode/internal/pack"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/pair"
	"vaultnode/appliance/pki"
	"vaultnode/internal/atomicfile"
	"vaultnode/internal/wire"
)

// A vault that is one member of a pair (appliance/pair; docs/pair.md):
// its catalog goes through the pair's raft log, its new chunks are copied
// to the other data member before they are acknowledged, and only the
// leader serves agents (the others answer not_leader, naming it).

// PairOptions make the vault a member of a pair.
type PairOptions struct {
	ID        string // member id, unique in the pair
	Listen    string // pair address (raft and replication, mutual TLS)
	Advertise string // pair address the others reach (default Listen's)
	// Agent is the agent API address the others send agents to (default
	// the vault's Listen; give it when Listen is a wildcard).
	Agent string
	// Form makes a new pair of this member alone (the first appliance).
	Form bool
	// DegradeAfter is how long a copy to the other data member may fail
	// before it is recorded behind (default 10 s).
	DegradeAfter time.Duration
	// HeartbeatTimeout: raft's; the default (1 s) suits a LAN.
	HeartbeatTimeout time.Duration
	// SnapshotThreshold: raft's entries between snapshots (default 8192).
	SnapshotThreshold uint64
	// TestCrashSweep, tests only: kill this process (SIGKILL) after that
	// many deletion batches of a sweep it applies for another member.
	TestCrashSweep int
}

// KindCatchUp is the job that copies to a member recorded behind the
// chunks it lacks.
const KindCatchUp jobs.Kind = "catch-up"

type pairMember struct {
	node   *pair.Node
	rep    *pair.Replicator
	tokens pair.Tokens
	cur    atomic.Pointer[pair.Node] // set once started: the catalog's Submit
	led    atomic.Bool               // jobs recovered for this leadership
	gc     pairGC                    // garbage collection through the log (pairgc.go)
}

// close stops the member: a sweep waiting for the store gives up.
func (pm *pairMember) close() error {
	pm.gc.quitOnce.Do(func() { close(pm.gc.quit) })
	if pm.node == nil {
		return nil
	}
	return pm.node.Close()
}

// submit is the catalog's Submit on a member.
func (pm *pairMember) submit(cmd catalog.Command) (any, error) {
	n := pm.cur.Load()
	if n == nil {
		return nil, fmt.Errorf("%w: the pair member is starting", catalog.ErrNotLeader)
	}
	return n.Submit(cmd)
}

// startPair starts this vault's member once the catalog is open; the store
// is opened after it with the replicator's hook (pairStore).
func (v *Vault) startPair() error {
	po := v.opts.Pair
	cert, err := v.CA.LoadOrCreateMember(filepath.Join(v.opts.Dir, "tls"), po.ID, v.clk.Now())
	if err != nil {
		return err
	}
	agent := po.Agent
	if agent == "" {
		agent = v.opts.Listen
	}
	n, err := pair.Start(pair.Config{ID: po.ID, Dir: filepath.Join(v.opts.Dir, "pair"), Bind: po.Listen, Advertise: po.Advertise,
		Agent: agent, TLS: pair.MemberTLS(cert, v.CA.Pool()), Catalog: v.Catalog, Log: v.log.Named("pair"),
		HeartbeatTimeout: po.HeartbeatTimeout, SnapshotThreshold: po.SnapshotThreshold, BeforeApply: v.beforeApply,
		Restoring: v.pairRestoring, Restored: v.pairRestored})
	if err != nil {
		return err
	}
	v.pair.node = n
	v.pair.cur.Store(n)
	mf, _ := json.Marshal(PairMemberFile{ID: po.ID, Listen: po.Listen, Advertise: n.Addr(), Agent: agent})
	if err := atomicfile.WriteFile(filepath.Join(v.opts.Dir, "pair", "member.json"), mf, 0o600); err != nil {
		return fmt.Errorf("write pair/member.json: %w", err)
	}
	v.pair.rep = pair.NewReplicator(n, nil, v.clk, v.log.Named("replica"), po.DegradeAfter)
	v.pair.rep.SetSweepIndex(v.pair.gc.sweepIndex.Load)
	v.pair.rep.SetOpener(func(company string) (*pack.Sealer, error) {
		k, err := v.companyKeys(company)
		if err != nil {
			return nil, err
		}
		return k.aead, nil
	})
	n.SetHandler(v.pair.rep.Handler())
	n.SetCopyHandler(v.pair.rep.ServeCopy)
	if po.Form {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.Bootstrap(ctx); err != nil {
			return err
		}
	}
	return nil
}

// PairMemberFile is DATA/pair/member.json: who this member is, for tools
// that run with the vault stopped (vaultctl pair promote).
type PairMemberFile struct {
	ID        string `json:"id"`
	Listen    string `json:"listen"`
	Advertise string `json:"advertise"`
	Agent     string `json:"agent"`
}

// ReadPairMember reads DATA/pair/member.json.
func ReadPairMember(dir string) (PairMemberFile, error) {
	var mf PairMemberFile
	b, err := os.ReadFile(filepath.Join(dir, "pair", "member.json"))
	if err != nil {
		return mf, fmt.Errorf("read pair member: %w (is %s a member of a pair?)", err, dir)
	}
	if len(b) > 4096 || json.Unmarshal(b, &mf) != nil || mf.ID == "" {
		return mf, fmt.Errorf("read pair member: %s/pair/member.json does not decode", dir)
	}
	return mf, nil
}

// JoinPair makes dir a new data member of the pair whose leader made tok
// (`vaultctl pair create`): it receives the vault's CA and master key,
// sealed, and a member certificate, and writes them; the vault then opens
// with Options.Pair and gets the catalog from the log. dir must hold no
// vault yet.
func JoinPair(ctx context.Context, dir, token string, po PairOptions, agentAddr string, witness bool) error {
	tok, err := pair.ParseJoinToken(token)
	if err != nil {
		return err
	}
	for _, f := range []string{"master.key", catalog.File, filepath.Join("tls", "ca.pem"), filepath.Join("pair", pair.LegacyLogFile), filepath.Join("pair", pair.LogDir)} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("join a pair: %s already holds a vault (%s): a member joins empty", dir, f)
		}
	}
	key, keyPEM, err := pki.NewMemberKey()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	adv := po.Advertise
	if adv == "" {
		adv = po.Listen
	}
	resp, err := pair.Join(ctx, tok, pair.JoinRequest{ID: po.ID, Raft: adv, Agent: agentAddr, Witness: witness, PublicKey: pub})
	if err != nil {
		return err
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		return fmt.Errorf("join a pair: %w", err)
	}
	certPath, keyPath := pki.MemberFiles(tlsDir)
	write := func(path string, b []byte, mode os.FileMode) error {
		if err == nil {
			err = atomicfile.WriteFile(path, b, mode)
		}
		return err
	}
	if !witness {
		s, oerr := pair.OpenSecrets(tok.Secret[:], resp.Sealed)
		if oerr != nil {
			return oerr
		}
		write(filepath.Join(tlsDir, "ca.key"), s.CAKey, 0o600)
		write(filepath.Join(dir, "master.key"), s.MasterKey, 0o600)
	}
	write(filepath.Join(tlsDir, "ca.pem"), resp.CA, 0o644)
	write(keyPath, keyPEM, 0o600)
	write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: resp.Certificate}), 0o644)
	if err != nil {
		return fmt.Errorf("join a pair: write what the leader sent: %w", err)
	}
	return nil
}

// pairJoin is the leader's side of a join (PathJoin on the agent API).
func (v *Vault) pairJoin(ctx context.Context, req pair.JoinRequest) (pair.JoinResponse, error) {
	if v.pair == nil {
		return pair.JoinResponse{}, fail(http.StatusNotFound, wire.CodeNotFound, "this vault is not a member of a pair")
	}
	if err := v.pair.tokens.Use(req.Secret, v.clk.Now()); err != nil {
		return pair.JoinResponse{}, fail(http.StatusForbidden, wire.CodeBadToken, "%v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(req.PublicKey)
	if err != nil {
		return pair.JoinResponse{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "join: public key: %v", err)
	}
	if req.Raft == "" || (!req.Witness && req.Agent == "") {
		return pair.JoinResponse{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "join: give the member's pair address (and a data member's agent address)")
	}
	der, err := v.CA.SignMember(pub, req.ID, v.clk.Now())
	if err != nil {
		return pair.JoinResponse{}, err
	}
	out := pair.JoinResponse{Certificate: der, CA: v.CA.CAPEM}
	if !req.Witness {
		caKey, err := os.ReadFile(filepath.Join(v.opts.Dir, "tls", "ca.key"))
		if err != nil {
			return out, fmt.Errorf("join: read the CA key: %w", err)
		}
		mk, err := os.ReadFile(filepath.Join(v.opts.Dir, "master.key"))
		if err != nil {
			return out, fmt.Errorf("join: read the master key: %w", err)
		}
		if out.Sealed, err = pair.SealSecrets(req.Secret, pair.Secrets{CAKey: caKey, MasterKey: mk}); err != nil {
			return out, err
		}
		// It joins empty: recorded behind until the catch-up copied
		// every chunk to it.
		cmd, err := catalog.NewCommand(pair.KindBehind, pair.Behind{Member: req.ID, Since: v.clk.Now().UTC(), Reason: "joined empty"})
		if err != nil {
			return out, err
		}
		if _, err := v.pair.node.Submit(cmd); err != nil {
			return out, err
		}
	}
	m := pair.Member{ID: req.ID, Raft: req.Raft, Agent: req.Agent, Witness: req.Witness}
	if err := v.pair.node.AddMember(ctx, m); err != nil {
		return out, fail(http.StatusBadRequest, wire.CodeBadRequest, "join: %v", err)
	}
	v.log.Info("member joined the pair", zap.String("member", req.ID), zap.Bool("witness", req.Witness), zap.String("pair_address", req.Raft))
	return out, nil
}

// PairToken makes a one-time join token valid for life (`vaultctl pair
// create`); on the leader only.
func (v *Vault) PairToken(ctx context.Context, p *Principal, life time.Duration) (string, error) {
	if !p.Has(CapOperate) || p.Kind == Agent {
		return "", forbid(p, CapOperate)
	}
	if v.pair == nil {
		return "", fail(http.StatusBadRequest, wire.CodeBadRequest, "this vault is not a member of a pair: start vaultd with -pair-id, -pair-listen and -pair-form")
	}
	if !v.pair.node.IsLeader() {
		return "", v.notLeader()
	}
	secret, err := v.pair.tokens.Make(v.clk.Now(), life)
	if err != nil {
		return "", fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	m, _ := v.pair.node.Leader()
	return pair.JoinToken{Secret: secret, CAPin: wire.Pin(v.CA.CA), Leader: m.Agent}.String(), nil
}

// PairRemove removes a member from the pair for good (a dead appliance
// being replaced, a witness moved): `vaultctl pair remove ID`, on the
// leader. Its behind record goes with it.
func (v *Vault) PairRemove(ctx context.Context, p *Principal, id string) error {
	if !p.Has(CapOperate) || p.Kind == Agent {
		return forbid(p, CapOperate)
	}
	if v.pair == nil {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "this vault is not a member of a pair")
	}
	if !v.pair.node.IsLeader() {
		return v.notLeader()
	}
	if id == v.pair.node.ID() {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "the leader does not remove itself: remove another member, or stop this one and remove it from the new leader")
	}
	if err := v.pair.node.RemoveMember(ctx, id); err != nil {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	cmd, err := catalog.NewCommand(pair.KindBehind, pair.Behind{Member: id, Caught: true})
	if err != nil {
		return err
	}
	_, err = v.pair.node.Submit(cmd)
	return err
}

// PairStatus is `vaultctl pair status`: this member's view, each other
// member's applied index asked over the pair address, and the bytes a
// member recorded behind lacks.
func (v *Vault) PairStatus(ctx context.Context, p *Principal) (pair.Status, error) {
	if !p.Has(CapOperate) || p.Kind == Agent {
		return pair.Status{}, forbid(p, CapOperate)
	}
	if v.pair == nil {
		return pair.Status{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "this vault is not a member of a pair")
	}
	st := v.pair.node.Status()
	for i := range st.Members {
		m := &st.Members[i]
		if m.ID == st.ID {
			continue
		}
		if ps, err := v.pair.node.PeerStatus(ctx, m.Raft); err == nil {
			m.LagCommands = max(int64(st.LastIndex)-int64(ps.LastIndex), 0)
			if !m.Witness {
				m.LagBytes = max(st.StoreBytes-ps.StoreBytes, 0)
			}
			m.Contact = "reachable"
		} else {
			m.Contact = "unreachable: " + err.Error()
		}
	}
	return st, nil
}

func (v *Vault) notLeader() error {
	if m, ok := v.pair.node.Leader(); ok && m.Agent != "" {
		return &apiError{status: http.StatusMisdirectedRequest, code: wire.CodeNotLeader,
			msg: fmt.Sprintf("this vault (pair member %s) does not lead the pair; the leader is %s at %s", v.pair.node.ID(), m.ID, m.Agent)}
	}
	return &apiError{status: http.StatusServiceUnavailable, code: wire.CodeNotLeader, retryAfter: time.Second,
		msg: fmt.Sprintf("this vault (pair member %s) does not lead the pair and no leader is known now: try again shortly, or another address of the pair", v.pair.node.ID())}
}

// followLeader answers every agent route but the health check and the
// join with not_leader on a member that does not lead, naming the leader
// in wire.HeaderLeader.
func (v *Vault) followLeader(next http.Handler) http.Handler {
	if v.pair == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v.pair.node.IsLeader() {
			w.Header().Set(wire.HeaderVaults, strings.Join(v.pairVaults(), ","))
			next.ServeHTTP(w, r)
			return
		}
		if r.URL.Path == wire.PathHealth {
			next.ServeHTTP(w, r)
			return
		}
		if m, ok := v.pair.node.Leader(); ok && m.Agent != "" {
			w.Header().Set(wire.HeaderLeader, m.Agent)
		}
		v.writeErr(w, r, v.notLeader())
	})
}

// pairGate refuses to acknowledge while a copy to the other data member
// failed and the pair could not record it behind.
func (v *Vault) pairGate() error {
	if v.pair == nil {
		return nil
	}
	if err := v.pair.rep.Gate(); err != nil {
		return &apiError{status: http.StatusServiceUnavailable, code: wire.CodeBusy, retryAfter: 5 * time.Second,
			msg: "the pair cannot make this durable on both members now (" + err.Error() + "); try again later"}
	}
	return nil
}

// pairVaults are the agent addresses of the pair's data members, the
// leader's first (an enrolment's answer).
func (v *Vault) pairVaults() []string {
	if v.pair == nil {
		return nil
	}
	ms, _ := pair.Members(v.Catalog)
	lead, _ := v.pair.node.Leader()
	out := []string{}
	if lead.Agent != "" {
		out = append(out, lead.Agent)
	}
	for _, m := range ms {
		if !m.Witness && m.Agent != "" && m.ID != lead.ID {
			out = append(out, m.Agent)
		}
	}
	return out
}

// runPair runs until ctx ends: on gaining leadership it recovers the job
// records; while leading it makes caught-up members voters and starts the
// catch-up job when a member is recorded behind.
func (v *Vault) runPair(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var forgot time.Time // the last time the kept sweeps were looked at
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n := v.pair.node
		if !n.IsLeader() {
			v.pair.led.Store(false)
			v.followerRepack(ctx)
			continue
		}
		if now := v.clk.Now(); now.Sub(forgot) >= 10*time.Second {
			forgot = now
			if err := v.forgetSweeps(ctx); err != nil {
				v.log.Warn("forget the sweeps every member applied", zap.Error(err))
			}
		}
		if !v.pair.led.Load() {
			if _, err := v.Jobs.Recover(); err != nil {
				v.log.Warn("recover job records on gaining leadership", zap.Error(err))
				continue
			}
			v.pair.led.Store(true)
		}
		if _, err := n.PromoteReady(ctx); err != nil {
			v.log.Warn("make caught-up members voters", zap.Error(err))
		}
		bs, err := pair.BehindMembers(v.Catalog)
		if err != nil || len(bs) == 0 {
			continue
		}
		if v.handOverBehind(ctx, bs) {
			continue
		}
		if _, err := v.Jobs.Start(KindCatchUp, "pair"); err != nil && !errors.Is(err, jobs.ErrBusy) {
			v.log.Warn("start the catch-up job", zap.Error(err))
		}
	}
}

// handOverBehind hands leadership to a whole data member that answers
// when this leader is itself recorded behind (it was elected while the
// other was up and whole, e.g. late heartbeats on a loaded machine): no
// member copies to the leader, so it would stay behind for good. True
// when it did. A behind leader whose other member is gone serves on.
func (v *Vault) handOverBehind(ctx context.Context, bs []pair.Behind) bool {
	self := v.pair.node.ID()
	behind := map[string]bool{}
	for _, b := range bs {
		behind[b.Member] = true
	}
	if !behind[self] {
		return false
	}
	ms, err := pair.Members(v.Catalog)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.ID == self || m.Witness || behind[m.ID] {
			continue
		}
		if err := v.pair.node.HandOverTo(ctx, m); err != nil {
			v.log.Debug("a leader recorded behind hands over", zap.Error(err))
			continue
		}
		v.log.Info("this leader is recorded behind: handed leadership to a whole member, which copies what this one lacks",
			zap.String("member", m.ID))
		return true
	}
	return false
}

// catchUpJob copies to each member recorded behind what it lacks.
func (v *Vault) catchUpJob(ctx context.Context, p *jobs.Progress) (any, error) {
	bs, err := pair.BehindMembers(v.Catalog)
	if err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	for _, b := range bs {
		var last pair.CatchUpProgress
		err := v.pair.rep.CatchUp(ctx, b.Member, func(cp pair.CatchUpProgress) {
			p.Add(cp.Checked-last.Checked, cp.Bytes-last.Bytes)
			last = cp
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, b.Member)
	}
	return map[string]any{"caught_up": done}, errors.Join(errs...)
}

// registerPairMetrics adds the pair's series to the admin socket's
// /metrics: whether this member leads, the term, the applied log index,
// the members recorded behind.
func (v *Vault) registerPairMetrics() {
	n := v.pair.node
	v.Metrics.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vaultnode_pair_leader", Help: "1 while this member leads the pair"},
			func() float64 {
				if n.IsLeader() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vaultnode_pair_term", Help: "the pair's raft term as this member knows it"},
			func() float64 { return float64(n.Status().Term) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vaultnode_pair_applied_index", Help: "the last log index applied to this member's catalog"},
			func() float64 { return float64(n.Applied()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vaultnode_pair_members_behind", Help: "data members recorded as lacking chunks"},
			func() float64 { bs, _ := pair.BehindMembers(v.Catalog); return float64(len(bs)) }),
	)
}

func (v *Vault) pairHealth() map[string]any {
	if v.pair == nil {
		return nil
	}
	st := v.pair.node.Status()
	return map[string]any{"id": st.ID, "state": st.State, "leader": st.Leader, "term": st.Term, "applied_index": st.Applied}
}
