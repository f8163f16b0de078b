package firmware

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"vaultnode/firmware/config"
	"vaultnode/firmware/service"
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
	args := []string{"-pair-id", p.ID, "-pair-listen", fmt.Sprintf("0.0.0.0:%d", PairPort),
		"-pair-advertise", net.JoinHostPort(p.Address, strconv.Itoa(PairPort)),
		"-pair-agent", net.JoinHostPort(p.Address, strconv.Itoa(VaultPort))}
	if v := m.cmdline["vaultnode.pairheartbeat"]; v != "" { // tests under TCG: a slow guest must not lose its leadership
		args = append(args, "-pair-heartbeat", v)
	}
	joined := false
	if _, err := os.Stat(filepath.Join(VaultDataDir, "pair", "raft.db")); err == nil {
		joined = true
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
