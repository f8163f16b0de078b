package firmware

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"vaultnode/firmware/config"
	"vaultnode/firmware/service"
	"vaultnode/firmware/setup"
)

// pairArgs are vaultd's -pair flags for the configured pair (none for a
// standalone vault). The first appliance forms the pair (vaultd does it
// once: a restart finds its raft state); the second joins with its token
// until its raft state exists, and the firmware then forgets the token.
func (m *Machine) pairArgs() []string {
	p := m.config().Pair
	if p == nil {
		return nil
	}
	args := []string{"-pair-id", p.ID, "-pair-listen", fmt.Sprintf(":%d", PairPort),
		"-pair-advertise", net.JoinHostPort(p.Address, strconv.Itoa(PairPort)),
		"-pair-agent", net.JoinHostPort(p.Address, strconv.Itoa(VaultPort))}
	if v := m.cmdline["vaultnode.pairheartbeat"]; v != "" { // tests under TCG: a slow guest must not lose its leadership
		args = append(args, "-pair-heartbeat", v)
	}
	joined := false
	// The raft log: raft-wal, or raft.db before vaultd moved it there
	// (appliance/pair.HasLogStore).
	for _, f := range []string{"raft-wal", "raft.db"} {
		if _, err := os.Stat(filepath.Join(VaultDataDir, "pair", f)); err == nil {
			joined = true
		}
	}
	switch {
	case p.Role == config.PairFirst:
		args = append(args, "-pair-form")
	case p.Token != "" && !joined:
		args = append(args, "-pair-join", p.Token)
	case p.Token != "":
		m.forgetJoinToken()
	}
	return args
}

// forgetJoinToken drops a used join token from the saved configuration.
func (m *Machine) forgetJoinToken() {
	m.mu.Lock()
	if m.cfg.Pair == nil || m.cfg.Pair.Token == "" {
		m.mu.Unlock()
		return
	}
	p := *m.cfg.Pair
	p.Token = ""
	m.cfg.Pair = &p
	cfg := m.cfg
	m.mu.Unlock()
	if err := config.Save(ConfigPath, cfg); err != nil {
		m.log.Warn("forget the used pair join token", zap.Error(err))
	}
}

// announcePairToken prints a join token on the console once the first
// appliance of a new pair serves: the second appliance's setup asks for
// it. Later tokens come from `vaultctl pair create`.
func (m *Machine) announcePairToken(ctx context.Context, sup *service.Supervisor) {
	if _, err := sup.WaitFor(ctx, "vaultd", service.Status.Ready); err != nil {
		return
	}
	var tok string
	var err error
	for i := 0; i < 10 && ctx.Err() == nil; i++ { // the raft leadership may take a moment after health
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cmd := exec.Command("/bin/vaultctl", "-data", VaultDataDir, "pair", "create", "-ttl", "24h")
		var out []byte
		out, err = m.reaper.Output(cctx, cmd)
		cancel()
		tok = ""
		for _, l := range strings.Split(string(out), "\n") {
			if l = strings.TrimSpace(l); strings.HasPrefix(l, "vnpair1.") {
				tok = l
			}
		}
		if err == nil && tok != "" {
			break
		}
		if err == nil {
			err = errors.New("vaultctl printed no token")
		}
		err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		<-m.clk.After(time.Second)
	}
	if err != nil {
		m.problem("make the pair's join token: %v: run `vaultctl pair create` in the support shell", err)
		return
	}
	m.printf("\n*** Pair formed. Join token for the second appliance (valid 24 h, once; paste it in its setup):\n%s\n"+
		"*** A witness on a third machine: run `vaultctl pair create` here for its own token (docs/pair.md).\n\n", tok)
}

// pairControl is the control socket's "pair join TOKEN [id=ID]
// [address=ADDR]" (what `vaultctl pair join` sends): an appliance set up
// standalone, whose vault holds nothing yet, joins a pair. The services
// stop, the standalone vault's directory is kept aside, the pair goes
// into the configuration, and vaultd starts again with -pair-join.
func (m *Machine) pairControl(ctx context.Context, args []string, w io.Writer) error {
	if len(args) < 2 || args[0] != "join" {
		return errors.New("usage: pair join TOKEN [id=ID] [address=ADDRESS]")
	}
	cfg := m.config()
	if cfg.Pair != nil {
		return fmt.Errorf("this appliance is already member %s of a pair (%s): nothing to join", cfg.Pair.ID, cfg.Pair.Role)
	}
	p := &config.Pair{Role: config.PairJoin, Token: args[1], ID: strings.SplitN(cfg.Hostname, ".", 2)[0]}
	if pfx, err := netip.ParsePrefix(cfg.Network.Address); err == nil && !cfg.Network.DHCP {
		p.Address = pfx.Addr().String()
	}
	for _, kv := range args[2:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "id":
			p.ID = v
		case "address":
			p.Address = v
		default:
			return fmt.Errorf("pair join: unknown %q: give id=ID or address=ADDRESS", kv)
		}
	}
	leader, err := setup.ParseJoinToken(p.Token)
	if err != nil {
		return err
	}
	if err := setup.ValidMemberID(p.ID); err != nil {
		return err
	}
	if p.Address == "" {
		return errors.New("the network is DHCP: give the address the other members and the agents reach this appliance at (vaultctl pair join -address ADDR TOKEN)")
	}
	if err := setup.ValidPairAddress(p.Address); err != nil {
		return err
	}
	m.svcMu.Lock()
	defer m.svcMu.Unlock()
	if m.svcStop == nil {
		return errors.New("the appliance is still starting: try again once the vault runs")
	}
	fmt.Fprintf(w, "stopping the services\n")
	if err := m.stopServicesLocked(); err != nil {
		return err
	}
	aside := fmt.Sprintf("%s.standalone-%s", VaultDataDir, m.clk.Now().UTC().Format("20060102-150405"))
	err = os.Rename(VaultDataDir, aside)
	if err == nil {
		err = os.MkdirAll(VaultDataDir, 0o700)
	}
	if err == nil {
		cfg.Pair = p
		err = config.Save(ConfigPath, cfg)
	}
	if err != nil {
		err = fmt.Errorf("pair join: %w", err)
		if _, serr := os.Stat(aside); serr == nil {
			os.Remove(VaultDataDir)
			if rerr := os.Rename(aside, VaultDataDir); rerr != nil {
				err = errors.Join(err, fmt.Errorf("put the vault back from %s: %w", aside, rerr))
			}
		}
		return errors.Join(err, m.startServicesLocked())
	}
	m.mu.Lock()
	m.cfg.Pair = p
	m.mu.Unlock()
	m.printf("*** joining the pair led by %s as member %s at %s; the standalone vault is kept in %s\n", leader, p.ID, p.Address, aside)
	fmt.Fprintf(w, "the standalone vault is kept in %s (remove it once the pair serves)\n", aside)
	if err := m.startServicesLocked(); err != nil {
		return err
	}
	fmt.Fprintf(w, "vaultd joins the pair led by %s as member %s at %s: follow with `vaultctl pair status`\n", leader, p.ID, p.Address)
	return nil
}
