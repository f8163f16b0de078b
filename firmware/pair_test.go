package firmware

import (
	"strings"
	"testing"

	"go.uber.org/zap"

	"vaultnode/firmware/config"
)

// TestPairArgs: vaultd's -pair flags follow the saved configuration.
func TestPairArgs(t *testing.T) {
	m := &Machine{log: zap.NewNop(), cmdline: map[string]string{"vaultnode.pairheartbeat": "3s"}}
	if got := m.pairArgs(); got != nil {
		t.Errorf("standalone: %q, want no pair flags", got)
	}
	m.cfg.Pair = &config.Pair{Role: config.PairFirst, ID: "a", Address: "192.168.1.10"}
	want := "-pair-id a -pair-listen :7444 -pair-advertise 192.168.1.10:7444 -pair-agent 192.168.1.10:7443 -pair-heartbeat 3s -pair-form"
	if got := strings.Join(m.pairArgs(), " "); got != want {
		t.Errorf("first:\n got %s\nwant %s", got, want)
	}
	m.cfg.Pair = &config.Pair{Role: config.PairJoin, ID: "b", Address: "fd00::2", Token: "vnpair1.x.y.z"}
	want = "-pair-id b -pair-listen :7444 -pair-advertise [fd00::2]:7444 -pair-agent [fd00::2]:7443 -pair-heartbeat 3s -pair-join vnpair1.x.y.z"
	if got := strings.Join(m.pairArgs(), " "); got != want { // no raft state in VaultDataDir here: not joined yet
		t.Errorf("join:\n got %s\nwant %s", got, want)
	}
}
