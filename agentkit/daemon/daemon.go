// Package daemon is the agent's long-running service (`vault-agent run`):
// it keeps every configuration of the computer protected according to its
// mode and schedule, follows configuration and bandwidth changes made on
// the vault without a restart, reports each configuration's state to the
// vault, and survives restarts of itself and of the vault.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/agentkit/bwlimit"
	"vaultnode/agentkit/client"
	"vaultnode/agentkit/state"
	"vaultnode/agentkit/watch"
	"vaultnode/internal/bandwidth"
	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// Options of Run.
type Options struct {
	State *state.Dir
	Log   *zap.Logger
	Clock clock.Clock
	// Poll is how often the vault is asked for configuration changes,
	// back-up-now requests and bandwidth settings (default 30s).
	Poll time.Duration
	// Watch tunes continuous change capture.
	Watch watch.Options
	// Retry is the first delay after a failed synchronization; it doubles
	// up to 15 minutes (default 30s).
	Retry time.Duration
	// Browse lists the directories the vault may browse through the
	// command channel (default "/"); NoBrowse refuses every browse, and
	// NoCommands turns the channel off.
	Browse     []string
	NoBrowse   bool
	NoCommands bool
}

// SocketName is the control socket in the state directory.
const SocketName = "agent.sock"

type daemon struct {
	o      Options
	log    *zap.Logger
	clk    clock.Clock
	client *client.Client
	lim    *bwlimit.Limiter

	mu      sync.Mutex
	runners map[string]*runner
	runNow  map[string]int64
	bw      string
	comp    *wire.Computer
	runCtx  context.Context // Run's: the runners' parent, also when a command starts them
}

// Run serves until ctx is done.
func Run(ctx context.Context, o Options) error {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Poll <= 0 {
		o.Poll = 30 * time.Second
	}
	if o.Retry <= 0 {
		o.Retry = 30 * time.Second
	}
	id, cert, pool, err := o.State.Load()
	if err != nil {
		return err
	}
	d := &daemon{o: o, log: o.Log, clk: o.Clock, runners: map[string]*runner{}, runCtx: ctx}
	d.lim = bwlimit.New(bandwidth.Fixed(bandwidth.Unlimited), o.Clock)
	d.client = client.New(id.Vault, cert, pool, d.lim.RoundTripper)
	d.client.SetOnVaults(func(addrs []string) { // a pair's members changed
		if err := o.State.SetVault(strings.Join(addrs, ",")); err != nil {
			d.log.Warn("keep the vault's addresses", zap.Error(err))
		}
	})
	ln, err := d.listen()
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: d.control(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	d.log.Info("agent running", zap.String("vault", id.Vault), zap.String("computer", id.Computer))
	cmdDone := make(chan struct{})
	cctx, stopCommands := context.WithCancel(ctx)
	go func() {
		defer close(cmdDone)
		if !o.NoCommands {
			d.commands(cctx)
		}
	}()
	defer func() { stopCommands(); <-cmdDone }()

	backoff := time.Second
	for {
		err := d.poll(ctx)
		wait := o.Poll
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			d.log.Warn("cannot reach the vault; configurations keep their last known settings", zap.Error(err))
			wait, backoff = min(backoff, o.Poll), min(2*backoff, o.Poll)
		} else {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
		case <-d.clk.After(wait):
			continue
		}
		break
	}
	d.mu.Lock()
	rs := d.runners
	d.runners = nil
	d.mu.Unlock()
	for _, r := range rs {
		r.stop()
	}
	return nil
}

func (d *daemon) listen() (net.Listener, error) {
	p := filepath.Join(d.o.State.Path, SocketName)
	if c, err := net.Dial("unix", p); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent is already running on state directory %s", d.o.State.Path)
	}
	os.Remove(p)
	ln, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", p, err)
	}
	os.Chmod(p, 0o600)
	return ln, nil
}

// poll fetches the computer's configurations and settings and reconciles
// the runners with them.
func (d *daemon) poll(ctx context.Context) error {
	comp, err := d.client.Computer(ctx)
	if err != nil {
		d.heartbeat(ctx)
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.runners == nil {
		return nil
	}
	d.comp = comp
	if comp.Settings.Bandwidth != d.bw {
		p, err := bandwidth.ParseProfile(comp.Settings.Bandwidth)
		if comp.Settings.Bandwidth == "" {
			p, err = bandwidth.Fixed(bandwidth.Unlimited), nil
		}
		if err != nil {
			d.log.Error("ignoring bad bandwidth profile from the vault", zap.String("profile", comp.Settings.Bandwidth), zap.Error(err))
		} else {
			d.lim.SetProfile(p)
			d.bw = comp.Settings.Bandwidth
			d.log.Info("bandwidth limit", zap.String("profile", p.String()))
		}
	}
	seen := map[string]bool{}
	for _, cfg := range comp.Configs {
		seen[cfg.Name] = true
		r := d.runners[cfg.Name]
		if r != nil && r.cfg.Revision == cfg.Revision {
			continue
		}
		if r != nil {
			d.log.Info("configuration changed; restarting its runner", zap.String("config", cfg.Name), zap.Int64("revision", cfg.Revision))
			r.stop()
		}
		d.runners[cfg.Name] = d.start(ctx, cfg, comp)
	}
	for name, r := range d.runners {
		if !seen[name] {
			d.log.Info("configuration removed", zap.String("config", name))
			r.stop()
			delete(d.runners, name)
		}
	}
	if d.runNow == nil {
		d.runNow = comp.Settings.RunNow // requests made before this start were for an older agent
		if d.runNow == nil {
			d.runNow = map[string]int64{}
		}
	}
	for name, n := range comp.Settings.RunNow {
		if n > d.runNow[name] {
			if r := d.runners[name]; r != nil {
				d.log.Info("back up now requested by the vault", zap.String("config", name))
				r.requestNow()
			}
		}
		d.runNow[name] = n
	}
	go d.heartbeat(context.WithoutCancel(ctx))
	return nil
}

// heartbeat re-sends every runner's state, so the vault knows the agent is
// alive even when nothing changes.
func (d *daemon) heartbeat(ctx context.Context) {
	d.mu.Lock()
	var reps []wire.Report
	for _, r := range d.runners {
		reps = append(reps, r.current())
	}
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, rep := range reps {
		if err := d.client.Report(ctx, rep); err != nil {
			return
		}
	}
}

func (d *daemon) start(ctx context.Context, cfg wire.Config, comp *wire.Computer) *runner {
	rctx, cancel := context.WithCancel(ctx)
	r := &runner{d: d, cfg: cfg, chunkKey: [32]byte(comp.ChunkKey), gearKey: [32]byte(comp.GearKey),
		log: d.log.With(zap.String("config", cfg.Name)), cancel: cancel, done: make(chan struct{}),
		now: make(chan struct{}, 1), rep: wire.Report{Config: cfg.Name, State: wire.AgentIdle}}
	go func() {
		defer close(r.done)
		r.run(rctx)
	}()
	return r
}

// control serves the local control socket: `vault-agent backup` asks the
// running daemon to synchronize now instead of racing it.
func (d *daemon) control() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /run-now", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("config")
		d.mu.Lock()
		var rs []*runner
		for n, run := range d.runners {
			if name == "" || n == name {
				rs = append(rs, run)
			}
		}
		d.mu.Unlock()
		if len(rs) == 0 {
			http.Error(w, fmt.Sprintf("no configuration %q is running", name), http.StatusNotFound)
			return
		}
		for _, run := range rs {
			run.requestNow()
		}
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, run := range d.runners {
			rep := run.current()
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", rep.Config, rep.State, rep.Capture, rep.Reason)
		}
	})
	return mux
}

// RunNow asks a daemon running on the state directory to synchronize a
// configuration (all when config is empty) now. It returns ErrNoDaemon
// when none runs.
func RunNow(ctx context.Context, st *state.Dir, config string) error {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", filepath.Join(st.Path, SocketName))
	}}, Timeout: 10 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://agent/run-now?config="+config, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return ErrNoDaemon
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("agent daemon refused: %s", resp.Status)
	}
	return nil
}

// ErrNoDaemon means no daemon answers on the state directory.
var ErrNoDaemon = errors.New("no agent daemon is running on this state directory")
